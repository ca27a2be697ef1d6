"""Command line: run | validate | ls | preview. User errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustbench_fmnist import __version__
from robustbench_fmnist.errors import HarnessError

log = logging.getLogger("robustbench_fmnist")


def _add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment YAML, e.g. experiments/lighting.yaml")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the YAML)")
    parser.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--download", action="store_true", default=None, help="download the data if not found")
    parser.add_argument("--seed", type=int, help="overrides the YAML's seed")
    parser.add_argument("--output-dir", type=Path, help="parent folder of the report (default reports/)")
    parser.add_argument("--cache-dir", type=Path, help="checkpoint cache folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustbench_fmnist",
        description="Robustness benchmarks for Fashion-MNIST classifiers under lighting and viewpoint shifts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="train (or load cached) models, sweep perturbations, write the report")
    _add_experiment_flags(run)
    run.add_argument("--retrain", action="store_true", help="ignore cached checkpoints and train again")
    run.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    validate = commands.add_parser("validate", help="check an experiment YAML without running it")
    _add_experiment_flags(validate)

    ls = commands.add_parser("ls", help="list registered models and perturbations")
    ls.add_argument("kind", nargs="?", choices=["models", "perturbations"], help="list only this kind")
    ls.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*cnn*'")
    ls.add_argument("--markdown", action="store_true", help="print the perturbation severity table as Markdown")

    preview = commands.add_parser(
        "preview", help="write PNG grids: severities 0..5 of a perturbation on one image per class"
    )
    preview.add_argument("perturbation", help="a registered perturbation, a wildcard such as 'gamma_*', or 'all'")
    preview.add_argument("--output-dir", type=Path, default=Path("reports/preview"), help="default reports/preview/")
    preview.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    preview.add_argument("--backend", choices=["torch", "albumentations"], default="torch")
    preview.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    preview.add_argument("--no-verify", action="store_true", help="skip the count and checksum checks (custom data)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "device": args.device,
        "data.dir": str(args.data_dir) if args.data_dir else None,
        "data.download": args.download,
        "seed": args.seed,
        "output_dir": str(args.output_dir) if args.output_dir else None,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def cmd_validate(args: argparse.Namespace) -> int:
    from robustbench_fmnist.config import load_config
    from robustbench_fmnist.experiment import experiment_cells, resolve

    config = load_config(args.experiment, _overrides(args))
    models = resolve(config)
    cells = len(experiment_cells(config)) - 1
    print(
        f"{args.experiment}: ok - {len(models)} model(s) ({', '.join(m.name for m in models)}), "
        f"{len(config.perturbations)} perturbation(s), {cells} shifted cells + clean per model; "
        f"report -> {Path(config.output_dir) / config.name}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from robustbench_fmnist.config import load_config
    from robustbench_fmnist.experiment import run_experiment
    from robustbench_fmnist.report import load_report, summary_table

    config = load_config(args.experiment, _overrides(args))
    folder = run_experiment(config, retrain=args.retrain)
    results, run = load_report(folder)
    summary = summary_table(results)
    print(f"report written to {folder}/ (report.md, results.csv, run.json) in {run['timings_seconds']['total']:.1f} s")
    for row in summary.itertuples():
        print(
            f"  {row.model:<16} {row.perturbation:<16} clean {100 * row.clean_accuracy:6.2f} %  "
            f"mean {100 * row.mean_accuracy:6.2f} %  worst {100 * row.worst_accuracy:6.2f} %"
        )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from robustbench_fmnist.models import MODELS
    from robustbench_fmnist.perturbations.table import severity_markdown, severity_text

    if args.markdown:
        print(severity_markdown(args.pattern), end="")
        return 0
    if args.kind in (None, "models"):
        print("models:")
        for name in MODELS.names(args.pattern):
            entry = MODELS.get(name)
            tags = f" [{', '.join(entry.tags)}]" if entry.tags else ""
            print(f"  {name:<20} {entry.description}{tags}")
    if args.kind in (None, "perturbations"):
        print("perturbations: the parameter at severities 1..5 (severity 0 is clean; '-' beyond a probe's levels)")
        print(f"  {'name':<16} {'family':<9} " + " ".join(f"{'s' + str(s):>6}" for s in range(1, 6)) + "  unit")
        print(severity_text(args.pattern))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from robustbench_fmnist.data import load_fashion_mnist
    from robustbench_fmnist.errors import UnknownNameError
    from robustbench_fmnist.perturbations import PERTURBATIONS
    from robustbench_fmnist.report.preview import sample_per_class, write_preview

    pattern = "*" if args.perturbation == "all" else args.perturbation
    names = PERTURBATIONS.names(pattern)
    if not names:
        raise UnknownNameError(PERTURBATIONS.unknown_message(args.perturbation))
    if args.backend == "albumentations":
        from robustbench_fmnist.perturbations.albumentations_backend import ADAPTERS

        names = [n for n in names if n in ADAPTERS] or names
    test = load_fashion_mnist(args.data_dir, verify=not args.no_verify).test
    images, indices = sample_per_class(test.images, test.labels)
    for name in names:
        try:
            path = write_preview(
                name, images, indices, args.output_dir / f"{name}.png", seed=args.seed, backend=args.backend
            )
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from None
        print(f"wrote {path}")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "ls": cmd_ls, "preview": cmd_preview}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robustbench_fmnist.progress import set_progress

    quiet = getattr(args, "quiet", False)
    set_progress(not quiet)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; no partial report or checkpoint was written", file=sys.stderr)
        return 130
