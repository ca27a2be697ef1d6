"""MkDocs hooks: the YAML and CLI references are generated from the code at build time, so they cannot drift.

A page holding `<!-- generated: yaml-reference -->` gets the experiment schema (every key of
`ExperimentConfig` and the models it nests: type, default, description); one holding
`<!-- generated: cli-reference -->` gets every command's `--help`.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from robustbench_fmnist.cli import build_parser
from robustbench_fmnist.config import ExperimentConfig

YAML_MARK = "<!-- generated: yaml-reference -->"
CLI_MARK = "<!-- generated: cli-reference -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Fill a page's generation marks."""
    if YAML_MARK in markdown:
        markdown = markdown.replace(YAML_MARK, yaml_reference())
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    return markdown


def yaml_reference() -> str:
    """One table per section of the experiment YAML: each key's type, default and description."""
    sections: list[tuple[str, type[BaseModel]]] = []
    _collect("(top level)", ExperimentConfig, sections, set())
    parts = []
    for where, model in sections:
        doc = " ".join((model.__doc__ or "").split())
        parts.append(f"### `{where}`\n")
        if doc and model is not ExperimentConfig:
            parts.append(f"{doc}\n")
        parts.append("| key | type | default | what |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            parts.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_cell(field.description)} |")
        parts.append("")
    return "\n".join(parts)


def _collect(where: str, model: type[BaseModel], out: list[tuple[str, type[BaseModel]]], seen: set[type]) -> None:
    if model in seen:
        return
    seen.add(model)
    out.append((where, model))
    for name, field in model.model_fields.items():
        for nested in _models_in(field.annotation):
            label = name if where == "(top level)" else f"{where}.{name}"
            if nested.__name__ not in ("ExperimentConfig",):
                _collect(f"{label} ({nested.__name__})", nested, out, seen)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type(annotation: Any) -> str:
    return f"`{_cell(_spelt(annotation))}`"


def _spelt(annotation: Any) -> str:
    """An annotation as a YAML writer reads it: `list of int`, `nchw or nhwc`, `float or null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _spelt(args[0])
    if origin is typing.Literal:
        return " or ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_spelt(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_spelt(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_spelt(args[0])} to {_spelt(args[1])}" if args else "map"
    if isinstance(annotation, type):
        return {"str": "string", "Path": "path", "bool": "true or false"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if isinstance(value, BaseModel):
        return "its section's defaults"
    return f"`{_cell(json.dumps(to_jsonable_python(value)))}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
    """Every command's --help, in the order `--help` lists them."""
    parser = build_parser()
    parts = ["```text", parser.format_help().rstrip(), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        parts += [f"### `{name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(parts)
