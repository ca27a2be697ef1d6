"""`leaderboard`: report folders in, a leaderboard folder out (leaderboard.csv, .md, .html, figures/).

The board reads only what `run` saved (results.csv and run.json), so models can be trained and
reported one at a time and the board rebuilt from their folders without touching a model; the
same folders give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustbench_fmnist.config import DEFAULT_REFERENCE
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.files import absolute, check_replaceable, replace_folder
from robustbench_fmnist.report import figures
from robustbench_fmnist.report.bundle import read_data
from robustbench_fmnist.report.html import render_html
from robustbench_fmnist.report.leaderboard import (
    MIN_FIT_MODELS,
    SCALES,
    STANDARD,
    LineFit,
    board_table,
    effective_robustness,
    family_cells,
    model_role,
    per_seed_scores,
    verdict,
)
from robustbench_fmnist.report.markdown import markdown_table, pct, points, ratio
from robustbench_fmnist.report.writer import FAMILY_ORDER

BOARD = "leaderboard"  # the kind of folder `leaderboard` writes (see files.MARKER)
BOARD_CSV = "leaderboard.csv"
MIN_RESAMPLES = 100


@dataclass(frozen=True)
class Source:
    """One report folder on the board: how it is named in the board, and its run record."""

    label: str
    run: dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One model label as the board shows it, from its report's run.json."""

    model: str
    source: str
    role: str
    detail: str
    architecture: str
    seeds: int
    parameters: float
    macs: float
    train_seconds: float
    images_per_second: float
    images_per_second_std: float


def source_label(folder: Path) -> str:
    """A folder as the board names it: relative to the working folder where it lies inside it."""
    resolved = absolute(folder)
    try:
        return resolved.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return resolved.as_posix()


def read_sources(folders: list[Path]) -> tuple[list[Source], pd.DataFrame, list[Entry], dict[str, str]]:
    """Every folder's results and models; ConfigError for a model in two folders or mismatched test sets."""
    if not folders:
        raise ConfigError("leaderboard: give at least one report folder (e.g. reports/remedies reports/zoo/*)")
    sources, frames, entries = [], [], []
    families: dict[str, str] = {}
    owner: dict[str, str] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"leaderboard: {folder} is not a folder; give report folders written by `run`")
        data = read_data(folder)
        label = source_label(Path(folder))
        sources.append(Source(label, data.run))
        for model in dict.fromkeys(data.results["model"]):
            if model in owner:
                raise ConfigError(
                    f"leaderboard: model {model!r} is in both {owner[model]} and {label}; leave one folder out "
                    "(or give one experiment's model another name)"
                )
            owner[model] = label
        frames.append(data.results.assign(report=label))
        families.update({p["name"]: p["family"] for p in data.run["perturbations"]})
        entries += _entries(data.run["models"], label)
    results = pd.concat(frames, ignore_index=True)
    counts = results.groupby("report", sort=False)["n_images"].max()
    if counts.nunique() > 1:
        shown = ", ".join(f"{n:,} in {r}" for r, n in counts.items())
        raise ConfigError(f"leaderboard: the reports score different test sets ({shown}); rank reports of one size")
    return sources, results, entries, families


def _entries(models: list[dict[str, Any]], source: str) -> list[Entry]:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for info in models:
        by_label.setdefault(info["name"], []).append(info)
    entries = []
    for label, infos in by_label.items():
        role, detail = model_role(infos[0])
        rates = [i.get("eval_images_per_second") for i in infos if i.get("eval_images_per_second")]
        trains = [i["train_seconds"] for i in infos if i.get("train_seconds") is not None]
        entries.append(
            Entry(
                model=label,
                source=source,
                role=role,
                detail=detail,
                architecture=str(infos[0].get("architecture") or infos[0].get("factory") or label),
                seeds=len(infos),
                parameters=float(infos[0].get("parameters") or np.nan),
                macs=float(infos[0].get("macs") or np.nan),
                train_seconds=float(np.mean(trains)) if trains else np.nan,
                images_per_second=float(np.mean(rates)) if rates else np.nan,
                images_per_second_std=float(np.std(rates, ddof=1)) if len(rates) > 1 else np.nan,
            )
        )
    return entries


def check_board_options(folder: Path, scale: str, resamples: int) -> None:
    """ConfigError for options the board cannot use, before any folder is read."""
    if scale not in SCALES:
        raise ConfigError(f"leaderboard --scale: {scale!r} is not one of {', '.join(SCALES)}")
    if resamples < MIN_RESAMPLES:
        raise ConfigError(
            f"leaderboard --bootstrap: {resamples} resamples is too few for a band; give {MIN_RESAMPLES}+"
        )
    check_replaceable(absolute(folder), BOARD)


def write_leaderboard(
    folders: list[Path],
    output: Path,
    reference: str | None = None,
    scale: str = "logit",
    resamples: int = 1000,
) -> Path:
    """Build the board from `folders` into `output`, replacing it as a whole (or leaving it as it was).

    `reference` must be on the board; without one, `baseline_cnn` is the reference when it is there.
    """
    check_board_options(output, scale, resamples)
    sources, results, entries, families = read_sources(folders)
    models = list(dict.fromkeys(results["model"]))
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in models else None
    elif reference not in models:
        raise ConfigError(f"leaderboard --reference: {reference!r} is not on the board ({', '.join(models)})")
    cells, dropped = family_cells(results, families)
    per_seed = per_seed_scores(results, cells, reference)
    board = board_table(per_seed, int(results["n_images"].max()))
    roles = {e.model: e.role for e in entries}
    er, fits = effective_robustness(per_seed, board, roles, SCALES[scale], resamples)
    board = board.merge(er, on=["model", "family"], how="left")
    info = pd.DataFrame([e.__dict__ for e in entries])
    board = board.merge(info, on="model", how="left", suffixes=("", "_trained"))
    board["rank_label"] = [f"={r}" if tied else f"{r}" for r, tied in zip(board["rank"], board["tied"], strict=True)]
    order = [f for f in FAMILY_ORDER if f in set(board.family)]
    board["family"] = pd.Categorical(board["family"], order, ordered=True)
    board = board.sort_values(["family", "rank", "shifted_accuracy"], ascending=[True, True, False], kind="stable")
    board["family"] = board["family"].astype(str)
    with replace_folder(output, BOARD) as staging:
        (staging / "figures").mkdir()
        drawn = {}
        for family in order:
            rows = board[board.family == family]
            fit = next((f for f in fits if f.family == family), None)
            (staging / "figures" / f"line_{family}.png").write_bytes(
                figures.accuracy_on_the_line(rows, fit, family, scale, SCALES[scale].forward)
            )
            (staging / "figures" / f"ranking_{family}.png").write_bytes(figures.ranking_bars(rows, family))
            drawn[family] = (f"figures/ranking_{family}.png", f"figures/line_{family}.png")
        _board_csv(board).to_csv(staging / BOARD_CSV, index=False, float_format="%.6g")
        text = render_board(board, fits, sources, entries, cells, dropped, reference, scale, resamples, drawn)
        (staging / "leaderboard.md").write_text(text, encoding="utf-8")
        html = render_html(text, staging, "Robustness leaderboard")
        (staging / "leaderboard.html").write_text(html, encoding="utf-8")
    return output


_CSV_COLUMNS = ["family", "rank", "tied", "model", "role", "detail", "source", "architecture", "seeds"]
_CSV_METRICS = ["clean_accuracy", "shifted_accuracy", "worst_accuracy", "mce", "relative_mce", "shifted_ece",
                "clean_ece", "effective_robustness"]  # fmt: skip


def _board_csv(board: pd.DataFrame) -> pd.DataFrame:
    columns = list(_CSV_COLUMNS)
    for metric in _CSV_METRICS:
        columns += [metric, f"{metric}_std", f"{metric}_low", f"{metric}_high"]
    columns += ["line", "line_low", "line_high", "parameters", "macs", "train_seconds", "images_per_second",
                "images_per_second_std"]  # fmt: skip
    return board[columns]


def _with_interval(row: dict[str, Any], metric: str, show: Any = pct) -> str:
    value = row[metric]
    if pd.isna(value):
        return "n/a"
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if low is None or pd.isna(low):
        return show(value)
    return f"{show(value)} ({show(low)}–{show(high)})"


def _count(value: float, unit: str = "") -> str:
    if pd.isna(value):
        return "n/a"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _rate(row: dict[str, Any]) -> str:
    if pd.isna(row["images_per_second"]):
        return "n/a"
    sd = row["images_per_second_std"]
    return f"{row['images_per_second']:,.0f}" + ("" if pd.isna(sd) else f" ± {sd:,.0f}")


def _role(row: dict[str, Any]) -> str:
    return row["role"] + (f" ({row['detail']})" if row["detail"] else "")


def render_board(
    board: pd.DataFrame,
    fits: list[LineFit],
    sources: list[Source],
    entries: list[Entry],
    cells: dict[str, set[tuple]],
    dropped: dict[str, int],
    reference: str | None,
    scale: str,
    resamples: int,
    drawn: dict[str, tuple[str, str]],
) -> str:
    """The whole leaderboard.md."""
    lines = _board_intro(entries, sources, reference, scale, resamples)
    for family, (ranking, line) in drawn.items():
        rows = board[board.family == family].to_dict("records")
        perturbations = sorted({c[0] for c in cells[family]})
        lines += [
            f"## {family}",
            "",
            f"{len(cells[family])} cells: {', '.join(perturbations)}."
            + (f" {dropped[family]} cells some model lacks are left out for all." if dropped.get(family) else ""),
            "",
            _family_table(rows),
            "",
            f"![{family}: ranking]({ranking})",
            "",
            "### Accuracy on the line",
            "",
        ]
        lines += _line_text(rows, next((f for f in fits if f.family == family), None), scale)
        lines += ["", f"![{family}: accuracy on the line]({line})", ""]
    lines += _models_table(entries, board)
    lines += _sources_table(sources)
    return "\n".join(lines).rstrip() + "\n"


def _board_intro(
    entries: list[Entry], sources: list[Source], reference: str | None, scale: str, resamples: int
) -> list[str]:
    """The board's title and how to read it: what the intervals, ranks, mCE and effective robustness are."""
    seeds = sorted({e.seeds for e in entries})
    standard = sum(e.role == STANDARD for e in entries)
    return [
        "# Robustness leaderboard",
        "",
        f"{len(entries)} models from {len(sources)} report folders ({standard} trained the standard way), "
        f"{'/'.join(map(str, seeds))} seeds each. Every number is the mean over a model's seeds with its 95 % "
        "interval in brackets: for accuracies it holds the spread between trainings and the test-set term, for "
        "the rest the t-interval over seeds (as in the reports).",
        "",
        "- **Rank** is by mean accuracy under the family's shifts: 1 + the number of models whose interval lies "
        "wholly above this one's, so a model is ranked below only those it is separably worse than; `=` marks "
        "ranks shared with another model (ties).",
        f"- **mCE** and relative mCE are against `{reference}` (100 = as many errors as it makes; each seed is set "
        "against the reference's same seed)."
        if reference
        else "- **mCE** is n/a: no reference model on the board.",
        f"- **Effective robustness** (Taori et al. 2020, as imagenet-testbed computes it): a {scale} fit of shifted on "
        f"clean accuracy over the standard-trained models (`scipy.stats.linregress`, {resamples} bootstrap "
        "resamples of the models for the band); a model's effective robustness is its shifted accuracy minus the "
        "line at its clean accuracy, in points, averaged over seeds; its interval joins the seed interval and the "
        "band's. Robust training and test-time adaptation are drawn off the fit, not used for it.",
        "- **Worst cell** is the lowest accuracy over the family's cells; **ECE under shift** the mean over them; "
        "**images/s** is the evaluation sweep's rate in its own report's run (2 CPU cores where the reports say so).",
        "",
    ]


def _family_table(rows: list[dict[str, Any]]) -> str:
    """One family's ranking: a row per model with every metric and its interval."""
    return markdown_table(
        [
            "rank",
            "model",
            "role",
            "clean %",
            "under shift %",
            "worst cell %",
            "mCE",
            "rel. mCE",
            "ECE under shift %",
            "eff. robustness (points)",
            "images/s",
            "parameters",
        ],
        [
            [
                r["rank_label"],
                f"`{r['model']}`",
                _role(r),
                _with_interval(r, "clean_accuracy"),
                _with_interval(r, "shifted_accuracy"),
                _with_interval(r, "worst_accuracy"),
                _with_interval(r, "mce", ratio),
                _with_interval(r, "relative_mce", ratio),
                _with_interval(r, "shifted_ece"),
                _with_interval(r, "effective_robustness", points),
                _rate(r),
                _count(r["parameters"]),
            ]
            for r in rows
        ],
        align="rllrrrrrrrrr",
    )


def _line_text(rows: list[dict[str, Any]], fit: LineFit | None, scale: str) -> list[str]:
    if fit is None:
        return [f"No fit: it needs {MIN_FIT_MODELS} standard-trained models, this family has fewer."]
    text = [
        f"Fit over {len(fit.models)} standard models: {scale}(shifted) = {fit.intercept:.3f} + {fit.slope:.3f} × "
        f"{scale}(clean), r = {fit.r:.3f}.",
        "",
    ]
    for where in ("above the line", "below the line"):
        names = [
            f"`{r['model']}` {points(r['effective_robustness'])} "
            f"({points(r['effective_robustness_low'])} to {points(r['effective_robustness_high'])})"
            for r in rows
            if verdict(r["effective_robustness_low"], r["effective_robustness_high"]) == where
        ]
        text.append(f"- {where.capitalize()} beyond the intervals: " + (", ".join(names) if names else "none") + ".")
    return text


def _models_table(entries: list[Entry], board: pd.DataFrame) -> list[str]:
    """Every model with its clean accuracy (mean ± sd over seeds), size, training time and evaluation speed."""
    clean = board.drop_duplicates("model").set_index("model")
    entries = sorted(entries, key=lambda e: -clean.loc[e.model, "clean_accuracy"])
    rows = [
        [
            f"`{e.model}`",
            e.source,
            e.role + (f" ({e.detail})" if e.detail else ""),
            f"`{e.architecture}`",
            e.seeds,
            f"{pct(clean.loc[e.model, 'clean_accuracy'])} ± {pct(clean.loc[e.model, 'clean_accuracy_std'])}",
            _count(e.parameters),
            _count(e.macs),
            "n/a" if pd.isna(e.train_seconds) else f"{e.train_seconds:.1f}",
            "n/a" if pd.isna(e.images_per_second) else f"{e.images_per_second:,.0f}",
        ]
        for e in entries
    ]
    headers = ["model", "report", "role", "architecture", "seeds", "clean % (± sd)", "parameters", "MACs / image",
               "training s (mean)", "eval images/s"]  # fmt: skip
    return ["## Models", "", markdown_table(headers, rows, align="lllllrrrrr"), ""]


def _sources_table(sources: list[Source]) -> list[str]:
    rows = []
    for source in sources:
        env = source.run.get("environment", {})
        lock = env.get("lock") or {}
        config = source.run.get("config", {})
        seeds = config.get("seeds") or [config.get("seed")]
        rows.append(
            [
                source.label,
                f"`{env.get('git_commit', 'n/a')}`",
                "matches" if lock.get("matches") else "differs",
                ", ".join(map(str, seeds)),
                env.get("device", "n/a"),
                f"{source.run.get('timings_seconds', {}).get('total', float('nan')):.0f}",
            ]
        )
    headers = ["report", "commit", "lock", "seeds", "device", "run s"]
    return ["## Sources", "", markdown_table(headers, rows, align="llllll"), ""]
