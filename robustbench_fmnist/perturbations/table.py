"""The severity table of every registered perturbation: for `ls` and the docs."""

from __future__ import annotations

import math

from robustbench_fmnist.perturbations.albumentations_backend import NO_EQUIVALENT, transform_name
from robustbench_fmnist.perturbations.registry import FAMILIES, PERTURBATIONS, PerturbationEntry

HEADER = [
    "perturbation",
    "family",
    "what it does",
    "parameter",
    "s1",
    "s2",
    "s3",
    "s4",
    "s5",
    "YAML key",
    "albumentations",
]


def format_value(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def severity_rows(pattern: str = "*") -> list[list[str]]:
    """One row per perturbation, grouped by family: name, family, description, unit, s1..s5, key, backend."""
    entries = [PERTURBATIONS.get(n) for n in PERTURBATIONS.names(pattern)]
    entries.sort(key=lambda e: (FAMILIES.index(e.family), e.name))
    return [_row(e) for e in entries]


def _row(entry: PerturbationEntry) -> list[str]:
    levels = [format_value(v) for v in entry.levels] + ["-"] * (5 - len(entry.levels))
    key = entry.values_key or "- (fixed probe)"
    backend = transform_name(entry.name) or f"none: {NO_EQUIVALENT.get(entry.name, 'no adapter')}"
    random = " (random per image)" if entry.random else ""
    return [entry.name, entry.family, entry.description, entry.unit + random, *levels, key, backend]


def severity_markdown(pattern: str = "*") -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] * len(HEADER)) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in severity_rows(pattern)]
    return "\n".join(lines) + "\n"


def severity_text(pattern: str = "*") -> str:
    """A compact table for the terminal: name, family, s1..s5 and the unit."""
    lines = []
    for row in severity_rows(pattern):
        name, family, description, unit, *levels = row[:9]
        lines.append(f"  {name:<16} {family:<9} " + " ".join(f"{v:>6}" for v in levels) + f"  {unit}")
        lines.append(f"  {'':<16} {'':<9} {description}")
    return "\n".join(lines)
