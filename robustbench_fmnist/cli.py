"""Command line: run | validate | ls | preview | report | compare | reproduce | bench | verify.

User errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustbench_fmnist import __version__
from robustbench_fmnist.errors import ConfigError, HarnessError

log = logging.getLogger("robustbench_fmnist")

Subcommands = argparse._SubParsersAction  # what add_subparsers returns; argparse has no public name for it


def _add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment YAML, e.g. experiments/lighting.yaml")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the YAML)")
    parser.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--download", action="store_true", default=None, help="download the data if not found")
    parser.add_argument("--seed", type=int, help="run this one seed (overrides the YAML's seed and seeds)")
    parser.add_argument("--output-dir", type=Path, help="parent folder of the report (default reports/)")
    parser.add_argument("--cache-dir", type=Path, help="checkpoint cache folder")
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="only this model of the experiment (repeatable); one model's report is named after it",
    )


def _load(args: argparse.Namespace) -> Any:
    """The experiment the flags ask for: the YAML with its overrides, cut down to `--model`s when given."""
    from robustbench_fmnist.config import load_config, select_models

    config = load_config(args.experiment, _overrides(args))
    return select_models(config, args.model) if args.model else config


def build_parser() -> argparse.ArgumentParser:
    """The command line: global flags, then every command's parser."""
    parser = argparse.ArgumentParser(
        prog="robustbench_fmnist",
        description="Robustness benchmarks for Fashion-MNIST classifiers under lighting and viewpoint shifts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `--help` lists them
    _add_experiment_commands(commands)
    _add_lookup_commands(commands)
    _add_bench_command(commands)
    _add_report_commands(commands)
    _add_reproduce_command(commands)
    _add_verify_command(commands)
    return parser


def _add_experiment_commands(commands: Subcommands) -> None:
    """run, plan and validate: an experiment YAML in, a report (or its plan, or a check) out."""
    run = commands.add_parser("run", help="train (or load cached) models, sweep perturbations, write the report")
    _add_experiment_flags(run)
    run.add_argument("--retrain", action="store_true", help="ignore stored results and train and evaluate again")
    run.add_argument("--dry-run", action="store_true", help="print the plan's tasks, done or to do, and stop")
    run.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    plan = commands.add_parser("plan", help="print an experiment's tasks and which are already done (run --dry-run)")
    _add_experiment_flags(plan)
    plan.add_argument("--retrain", action="store_true", help="as run --retrain would plan it: every task to do")
    validate = commands.add_parser("validate", help="check an experiment YAML without running it")
    _add_experiment_flags(validate)


def _add_lookup_commands(commands: Subcommands) -> None:
    """ls and preview: what is registered, and what a perturbation looks like."""
    ls = commands.add_parser(
        "ls", help="list registered models, perturbations, adaptations, augmentations and adversaries' axes"
    )
    ls.add_argument(
        "words",
        nargs="*",
        metavar="[KIND] [PATTERN]",
        help="a kind (models, perturbations, adaptations, augmentations, axes) and/or a filter such as '*cnn*'",
    )
    ls.add_argument("--markdown", action="store_true", help="print the perturbation severity table as Markdown")
    ls.add_argument(
        "--timm",
        nargs="?",
        const="*",
        metavar="PATTERN",
        help="list timm's architectures (usable as timm:<name>) matching a pattern such as 'convnext*'",
    )

    preview = commands.add_parser(
        "preview",
        help="write PNG grids: severities 0..5 of a perturbation on one image per class, or an experiment's "
        "adversary spaces on one image",
    )
    preview.add_argument(
        "perturbation",
        help="a registered perturbation, a wildcard such as 'gamma_*', 'all', or an experiment YAML (one picture "
        "per adversary: its space's first two dimensions)",
    )
    preview.add_argument("--image", type=int, default=0, help="with a YAML: the test image shown (default 0)")
    preview.add_argument("--output-dir", type=Path, default=Path("reports/preview"), help="default reports/preview/")
    preview.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    preview.add_argument("--backend", choices=["torch", "albumentations"], default="torch")  # BACKENDS' names
    preview.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    preview.add_argument("--no-verify", action="store_true", help="skip the count and checksum checks (custom data)")


def _add_bench_command(commands: Subcommands) -> None:
    """bench: throughput of an experiment's models."""
    bench = commands.add_parser(
        "bench", help="measure images/s, latency, training speed and memory of the experiment's models"
    )
    _add_experiment_flags(bench)
    bench.add_argument("--retrain", action="store_true", help="ignore cached checkpoints and train again")


def _add_report_commands(commands: Subcommands) -> None:
    """report, leaderboard and compare: report folders in, no model needed."""
    report = commands.add_parser("report", help="re-render a report folder from its saved rows (no model needed)")
    report.add_argument("folder", type=Path, help="a report folder, e.g. reports/lighting")

    board = commands.add_parser(
        "leaderboard", help="rank the models of several report folders per shift family, with effective robustness"
    )
    board.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="REPORT",
        help="report folders (e.g. reports/remedies reports/zoo/*), or experiment YAMLs whose reports to use",
    )
    board.add_argument("--output-dir", type=Path, default=Path("reports/leaderboard"), help="the board's folder")
    board.add_argument("--reference", help="the model mCE is normalised by (default baseline_cnn when on the board)")
    board.add_argument("--scale", default="logit", help="axis of the accuracy-on-the-line fit: logit, probit, linear")
    board.add_argument("--bootstrap", type=int, default=1000, help="resamples of the fit's bootstrap band")

    compare = commands.add_parser("compare", help="accuracy differences between two report folders, with intervals")
    compare.add_argument("first", type=Path, help="report folder A")
    compare.add_argument("second", type=Path, help="report folder B")
    compare.add_argument("--output-dir", type=Path, help="default reports/compare/<A>-vs-<B>/")
    compare.add_argument(
        "--noise-from", type=Path, help="a multi-seed report of the same recipes, for sides with fewer than 2 seeds"
    )
    compare.add_argument("--model-a", help="compare this model of A ...")
    compare.add_argument("--model-b", help="... with this model of B (default: the same name as --model-a)")


def _add_reproduce_command(commands: Subcommands) -> None:
    """reproduce: a report's experiment run again here and checked against its seed spread."""
    reproduce = commands.add_parser(
        "reproduce", help="re-run a report's experiment here and check each cell against its seed spread"
    )
    reproduce.add_argument("folder", type=Path, help="a multi-seed report folder, e.g. reports/lighting")
    reproduce.add_argument("--seeds", type=int, nargs="+", help="train these seeds (default: the report's own)")
    reproduce.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    reproduce.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    reproduce.add_argument("--download", action="store_true", default=None, help="download the data if not found")
    reproduce.add_argument("--output-dir", type=Path, help="parent folder of <name>-reproduced/ (default reports/)")
    reproduce.add_argument("--cache-dir", type=Path, help="checkpoint cache folder")
    reproduce.add_argument("--retrain", action="store_true", help="ignore cached checkpoints and train again")
    reproduce.add_argument(
        "--trust-code",
        action="store_true",
        help="import and run the code the report's run.json names (a model's factory: module); off: refused",
    )


def _add_verify_command(commands: Subcommands) -> None:
    """verify: stored evaluation records evaluated again from their weights, like `git fsck`."""
    verify = commands.add_parser(
        "verify", help="re-evaluate a sample of a cache's or report's stored records and compare predictions"
    )
    verify.add_argument("path", type=Path, help="a cache folder (--cache-dir of a run) or a report folder")
    verify.add_argument("--sample", type=int, default=300, help="images re-evaluated per record (default 300)")
    verify.add_argument("--all", action="store_true", help="every image of every record, adapted ones too")
    verify.add_argument("--seed", type=int, default=0, help="which images the sample takes")
    verify.add_argument("--cache-dir", type=Path, help="for a report: the cache holding its records")
    verify.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    verify.add_argument("--trust-code", action="store_true", help="import the factory a record's model names")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "device": args.device,
        "data.dir": str(args.data_dir) if args.data_dir else None,
        "data.download": args.download,
        "seed": args.seed,
        "seeds": [args.seed] if args.seed is not None else None,  # --seed wins over a YAML list of seeds
        "output_dir": str(args.output_dir) if args.output_dir else None,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def cmd_validate(args: argparse.Namespace) -> int:
    from robustbench_fmnist.orchestration.checks import check_experiment

    config = _load(args)
    checked = check_experiment(config)
    adversaries = config.adversaries
    listed = f", {len(adversaries)} adversary(ies) ({', '.join(a.name for a in adversaries)})" if adversaries else ""
    print(
        f"{args.experiment}: ok - {len(checked.models)} model(s) ({', '.join(m.name for m in checked.models)}), "
        f"{len(config.perturbations)} perturbation(s), {len(checked.cells) - 1} shifted cells + clean per model"
        f"{listed}; device {checked.device}; report -> {checked.folder}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from robustbench_fmnist.orchestration.experiment import run_experiment

    config = _load(args)
    if args.dry_run:
        return cmd_plan(args)
    folder = run_experiment(config, retrain=args.retrain)
    failed = _print_headline(folder)
    if failed:
        print(f"{len(failed)} task(s) failed; the report marks their cells failed. Run again to retry only them:",
              file=sys.stderr)  # fmt: skip
        for line in failed:
            print(f"  {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from robustbench_fmnist.orchestration.experiment import plan_experiment

    print(plan_experiment(_load(args), retrain=args.retrain).describe())
    return 0


def _print_headline(folder: Path) -> list[str]:
    """Print the report's headline table; returns the lines of the tasks that failed."""
    from robustbench_fmnist.report.bundle import read_data
    from robustbench_fmnist.report.tables import headline_table, seed_mean

    data = read_data(folder)
    table = headline_table(seed_mean(data.results), data.run["config"].get("reference_model"))
    total = data.run["timings_seconds"]["total"]
    print(f"report written to {folder}/ (report.md, report.html, figures/, CSV files, run.json) in {total:.1f} s")
    for row in table.itertuples():
        mce = "n/a" if row.mce != row.mce else f"{100 * row.mce:.1f}"
        print(
            f"  {row.model:<16} clean {100 * row.clean_accuracy:6.2f} %"
            f"  shifted mean {100 * row.shifted_accuracy:6.2f} %"
            f"  mCE {mce:>5}  flip rate {100 * row.flip_rate:5.2f} %  ECE clean {100 * row.clean_ece:5.2f} %"
        )
    if data.reference is not None:
        from robustbench_fmnist.report.agreement import agreement_table, agreement_verdict

        verdict = agreement_verdict(agreement_table(data.results, data.reference))
        print(f"against {data.run['noise_from']['path']}: {verdict.summary} (section 'Against the reference')")
    return list(data.run.get("tasks", {}).get("failed", []))


def cmd_bench(args: argparse.Namespace) -> int:
    from robustbench_fmnist.orchestration.bench import run_bench

    config = _load(args)
    from robustbench_fmnist.environment import cpu_description

    folder, table = run_bench(config, retrain=args.retrain)
    cpu = cpu_description()
    print(f"throughput written to {folder}/throughput.csv; CPU: {cpu['model']}, {cpu['cores']} cores "
          f"({cpu['capability']}, {cpu['torch_threads']} torch threads)")  # fmt: skip
    # a missing device skips every row on it for one reason: say it once per device and reason
    skipped = table[table.status != "ok"].groupby(["device", "reason"], sort=False).size()
    for (device, reason), count in skipped.items():
        print(f"  {device}: {count} measurements skipped: {reason}")
    for row in table[table.status == "ok"].itertuples():
        if row.kind == "ceiling":
            print(f"  {row.kind:<12} {row.model:<28} {row.device:<5} {row.gflops:8.1f} GFLOP/s")
        else:
            detail = f"{row.dtype} batch {row.batch_size}" + (" compiled" if row.compiled else "")
            print(f"  {row.kind:<12} {row.model:<28} {row.device:<5} {row.images_per_second:10,.0f} images/s  {detail}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robustbench_fmnist.report.writer import rerender_report

    folder = rerender_report(args.folder)
    print(f"re-rendered {folder}/report.md, report.html and figures/ from its saved rows")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from robustbench_fmnist.files import absolute, check_writable_folder, replace_folder
    from robustbench_fmnist.report.agreement import read_noise_report
    from robustbench_fmnist.report.bundle import read_data
    from robustbench_fmnist.report.compare import compare_markdown, compare_runs

    first, second = read_data(args.first), read_data(args.second)
    noise = read_noise_report(args.noise_from, key="--noise-from") if args.noise_from else None
    name_a, name_b = absolute(args.first).name, absolute(args.second).name
    for flag, name, data in (("--model-a", args.model_a, first), ("--model-b", args.model_b, second)):
        if name is not None and name not in set(data.results["model"]):
            models = ", ".join(dict.fromkeys(data.results["model"]))
            raise ConfigError(f"{flag}: {name!r} is not a model of that report ({models})")
    if args.model_b is not None and args.model_a is None:
        raise ConfigError("--model-b needs --model-a: name the model of A to set against it")
    comparison = compare_runs(first, second, noise=noise, model_a=args.model_a, model_b=args.model_b)
    if comparison.table.empty:
        raise ConfigError(f"{name_a} and {name_b} share no cell (model, perturbation, severity); nothing to compare")
    keys = ["model", "perturbation", "severity"]
    a_cells = set(map(tuple, first.results[keys].drop_duplicates().to_numpy().tolist()))
    b_cells = set(map(tuple, second.results[keys].drop_duplicates().to_numpy().tolist()))
    if args.model_a is not None:
        a_cells = {c for c in a_cells if c[0] == args.model_a}
        b_cells = {(args.model_a, *c[1:]) for c in b_cells if c[0] == (args.model_b or args.model_a)}
    text = compare_markdown(comparison, name_a, name_b, len(a_cells - b_cells), len(b_cells - a_cells))
    output = args.output_dir or Path("reports") / "compare" / f"{name_a}-vs-{name_b}"
    check_writable_folder(output, "--output-dir")
    with replace_folder(output, "compare") as staging:
        (staging / "compare.md").write_text(text, encoding="utf-8")
        comparison.table.to_csv(staging / "compare.csv", index=False, float_format="%.6g")
    print(text, end="")
    print(f"rule: {comparison.rule}; written to {output}/compare.md and compare.csv")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from robustbench_fmnist.config import MAX_SEED, config_from_record
    from robustbench_fmnist.files import absolute
    from robustbench_fmnist.orchestration.experiment import run_experiment
    from robustbench_fmnist.orchestration.received import check_received
    from robustbench_fmnist.report.agreement import agreement_table, agreement_verdict, read_noise_report
    from robustbench_fmnist.report.bundle import read_data

    reference = read_noise_report(args.folder, key="reproduce")
    if args.seeds is not None and not all(0 <= s <= MAX_SEED for s in args.seeds):
        raise ConfigError(f"--seeds: must lie in 0..2**63-1, got {args.seeds}")
    name = f"{reference.run['config']['name']}-reproduced"
    overrides = {
        "name": name,
        "noise_from": str(absolute(args.folder)),
        "device": args.device,
        "data.dir": str(args.data_dir) if args.data_dir else None,
        "data.download": args.download,
        "seeds": list(args.seeds) if args.seeds else None,
        "output_dir": str(args.output_dir) if args.output_dir else None,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
    }
    source = f"{args.folder}/run.json"
    recipes = {m["name"]: m["recipe"] for m in reference.run.get("models") or [] if m.get("recipe")}
    given = {k: v for k, v in overrides.items() if v is not None}
    config = config_from_record(reference.run["config"], given, source, recipes)
    # the folder came from someone else: nothing it names is imported unless the user says so, before any work
    for code in check_received(config, source, trust_code=args.trust_code):
        print(f"--trust-code: {code}")
    folder = run_experiment(config, retrain=args.retrain)
    again = read_data(folder)
    table = agreement_table(again.results, again.reference)
    verdict = agreement_verdict(table)
    identical = _identical_weights(reference.run["models"], again.run["models"])
    print(f"{args.folder} reproduced in {folder}/ ({len(config.run_seeds)} seed(s) per model); weights: {identical}")
    for r in table.to_dict("records"):
        low, high = r["reference_accuracy"] - r["half_width"], r["reference_accuracy"] + r["half_width"]
        print(
            f"  {'ok ' if r['inside'] else 'OUT'} {r['model']:<16} {r['perturbation']:<18} s{r['severity']:<3}"
            f" {100 * r['accuracy']:6.2f} %  reference {100 * r['reference_accuracy']:6.2f}"
            f" ± {100 * r['reference_std']:.2f} (expected {100 * low:.2f}-{100 * high:.2f})"
        )
    print(verdict.summary)
    return 0 if verdict.agrees else 3


def _identical_weights(reference: list[dict[str, Any]], again: list[dict[str, Any]]) -> str:
    theirs = {(m.get("name"), m.get("seed")): m.get("weights_sha256") for m in reference}
    shared = [m for m in again if (m["name"], m["seed"]) in theirs]
    if not shared:
        return "no model and seed in common with the reference"
    same = sum(1 for m in shared if m.get("weights_sha256") and m["weights_sha256"] == theirs[(m["name"], m["seed"])])
    return f"{same} of {len(shared)} (model, seed) trainings bit-identical to the reference's"


def cmd_verify(args: argparse.Namespace) -> int:
    from robustbench_fmnist.data import load_fashion_mnist
    from robustbench_fmnist.orchestration.verify import report_data_dir, verify_path

    if not args.path.is_dir():
        raise ConfigError(f"verify: {args.path} is not a folder; give a cache folder or a report folder")
    if args.sample < 1:
        raise ConfigError(f"--sample: give at least 1 image per record, got {args.sample}")
    # the records name the data's checksum and are checked against it, so other data is refused there
    data = load_fashion_mnist(args.data_dir or report_data_dir(args.path), verify=False)
    sample = None if args.all else args.sample
    found = verify_path(
        args.path, data, cache_dir=args.cache_dir, sample=sample, seed=args.seed, trust_code=args.trust_code
    )
    for problem in found.problems:
        print(f"MISMATCH {problem}")
    if found.integrity_only:
        print(f"{len(found.integrity_only)} adapted records checked for integrity only (their predictions depend "
              "on the whole cell; --all evaluates them again)")  # fmt: skip
    if found.adversary_records:
        print(f"{len(found.adversary_records)} adversary records checked for integrity (checksum, dtypes; a search "
              "is repeated only by running its experiment with --retrain)")  # fmt: skip
    print(
        f"verified {found.checked} records ({found.images:,} image-cells evaluated again): "
        + ("every prediction matches" if found.ok else f"{len(found.problems)} problems")
    )
    return 0 if found.ok else 1


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from robustbench_fmnist.report.leaderboard_files import write_leaderboard

    folders = [folder for source in args.sources for folder in _report_folders(source)]
    folder = write_leaderboard(
        folders,
        args.output_dir,
        reference=args.reference,
        scale=args.scale,
        resamples=args.bootstrap,
    )
    print(f"leaderboard written to {folder}/ (leaderboard.md, leaderboard.html, leaderboard.csv, figures/)")
    return 0


def _report_folders(source: Path) -> list[Path]:
    """A report folder as given; for an experiment YAML, its report, or the one-model reports `--model` wrote."""
    from robustbench_fmnist.config import load_config, model_report_name
    from robustbench_fmnist.errors import ConfigError

    if source.suffix not in (".yaml", ".yml"):
        return [source]
    config = load_config(source)
    whole = config.output_dir / config.name
    if (whole / "results.csv").is_file():
        return [whole]
    singles = [config.output_dir / model_report_name(m.name, config.name) for m in config.models]
    found = [folder for folder in singles if (folder / "results.csv").is_file()]
    if not found:
        raise ConfigError(f"leaderboard: {source} has no report yet under {config.output_dir}; run it first")
    return found


LS_KINDS = ("models", "perturbations", "adaptations", "augmentations", "backends", "executors", "axes")


def cmd_ls(args: argparse.Namespace) -> int:
    from robustbench_fmnist.errors import ConfigError
    from robustbench_fmnist.evaluation.adaptation import ADAPTATIONS
    from robustbench_fmnist.models import MODELS
    from robustbench_fmnist.orchestration.executors import EXECUTORS
    from robustbench_fmnist.perturbations import PERTURBATIONS
    from robustbench_fmnist.perturbations.backends import BACKENDS
    from robustbench_fmnist.perturbations.space import AXES
    from robustbench_fmnist.perturbations.table import severity_markdown, severity_text
    from robustbench_fmnist.training.augmentation import AUGMENTATIONS

    words = list(args.words)
    kind = words.pop(0) if words and words[0] in LS_KINDS else None
    if len(words) > 1 or (words and words[0] in LS_KINDS):
        raise ConfigError(f"ls takes at most one kind and one pattern, got {' '.join(args.words)!r}; quote the pattern")
    pattern = words[0] if words else "*"
    if args.markdown and kind not in (None, "perturbations"):
        raise ConfigError(f"ls --markdown prints the perturbation severity table; drop {kind!r}")
    if args.timm is not None:
        return _ls_timm(kind, args.timm if pattern == "*" else pattern, args.markdown)
    # --markdown is the perturbation table; otherwise the kind asked for, or all of them
    registries = {"models": MODELS, "perturbations": PERTURBATIONS, "adaptations": ADAPTATIONS,
                  "augmentations": AUGMENTATIONS, "backends": BACKENDS, "executors": EXECUTORS,
                  "axes": AXES}  # fmt: skip
    searched = [registries[kind or "perturbations"]] if kind or args.markdown else list(registries.values())
    if not any(registry.names(pattern) for registry in searched):
        raise ConfigError(f"ls: nothing matches {pattern!r}; patterns are shell-style, e.g. '*cnn*' or 'gamma_*'")
    if args.markdown:
        print(severity_markdown(pattern), end="")
        return 0
    if kind == "models" or (kind is None and MODELS.names(pattern)):
        print("models:")
        for name in MODELS.names(pattern):
            entry = MODELS.get(name)
            tags = f" [{', '.join(entry.tags)}]" if entry.tags else ""
            print(f"  {name:<20} {entry.description}{tags}")
    if kind == "perturbations" or (kind is None and PERTURBATIONS.names(pattern)):
        print("perturbations: the parameter at severities 1..5 (severity 0 is clean; '-' beyond a probe's levels)")
        print(f"  {'name':<16} {'family':<9} " + " ".join(f"{'s' + str(s):>6}" for s in range(1, 6)) + "  unit")
        print(severity_text(pattern))
    if kind in (None, "adaptations") and ADAPTATIONS.names(pattern):
        print("adaptations (evaluation.adaptation):")
        for name in ADAPTATIONS.names(pattern):
            print(f"  {name:<16} {ADAPTATIONS.get(name).description}")
    for shown, registry, key in (
        ("augmentations", AUGMENTATIONS, "train.robust_augment.method"),
        ("backends", BACKENDS, "evaluation.backend, or backend: per perturbation"),
        ("executors", EXECUTORS, "executor.kind"),
    ):
        if kind in (None, shown) and registry.names(pattern):
            print(f"{shown} ({key}):")
            for name in registry.names(pattern):
                print(f"  {name:<16} {registry.get(name).description}")
    if kind in (None, "axes") and AXES.names(pattern):
        _print_axes(AXES.names(pattern))
    return 0


def _print_axes(names: list[str]) -> None:
    """`ls axes`: what a space of `adversaries:` can name, the value that changes nothing and the kernel's range."""
    import textwrap

    from robustbench_fmnist.perturbations.space import AXES
    from robustbench_fmnist.perturbations.space_checks import perturbation_axes

    print("axes (adversaries[].space: {axis: [low, high, points]}):")
    print(f"  {'name':<12} {'unit':<28} {'identity':>8}  bounds")
    for name in names:
        entry = AXES.get(name)
        low, high = entry.bounds
        print(f"  {name:<12} {entry.unit:<28} {entry.identity:>8g}  {low:g}..{high:g}")
    print(
        "  any perturbation with a continuous parameter is an axis too, in its own unit and range (ls perturbations);"
    )
    print("  search: gradient takes only the axes above. Those perturbations:")
    print(textwrap.fill(", ".join(perturbation_axes()), width=100, initial_indent="    ", subsequent_indent="    "))


def _ls_timm(kind: str | None, pattern: str, markdown: bool) -> int:
    """`ls models --timm PATTERN`: timm's own names, as a YAML file would write them."""
    import fnmatch

    from robustbench_fmnist.errors import ConfigError
    from robustbench_fmnist.models.timm_models import TIMM_PREFIX, timm_names

    if kind not in (None, "models") or markdown:
        raise ConfigError(f"ls --timm lists timm's models; drop {'--markdown' if markdown else repr(kind)}")
    names = [n for n in timm_names() if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise ConfigError(f"ls --timm: no timm model matches {pattern!r}; patterns are shell-style, e.g. 'convnext*'")
    print(f"timm models matching {pattern!r} ({len(names)}; write them as timm:<name>):")
    for name in names:
        print(f"  {TIMM_PREFIX}{name}")
    return 0


PREVIEW = "preview"  # the kind of folder `preview` writes into (see files.MARKER)


def cmd_preview(args: argparse.Namespace) -> int:
    from robustbench_fmnist.data import load_fashion_mnist
    from robustbench_fmnist.errors import ConfigError, UnknownNameError
    from robustbench_fmnist.perturbations import PERTURBATIONS
    from robustbench_fmnist.perturbations.backends import BACKENDS
    from robustbench_fmnist.report.preview import preview_grid, sample_per_class

    if args.perturbation.endswith((".yaml", ".yml")):
        return _preview_spaces(args)
    pattern = "*" if args.perturbation == "all" else args.perturbation
    names = PERTURBATIONS.names(pattern)
    if not names:
        raise UnknownNameError(PERTURBATIONS.unknown_message(args.perturbation))
    backend = BACKENDS.get(args.backend)
    supported = [n for n in names if backend.unsupported(n) is None]
    if not supported:
        reason = backend.unsupported(names[0])
        raise ConfigError(f"{args.perturbation}: no {args.backend} backend ({reason}); use --backend torch")
    _check_preview_output(args)
    test = load_fashion_mnist(args.data_dir, verify=not args.no_verify).test
    images, indices = sample_per_class(test.images, test.labels)
    for name in supported:
        try:
            grid = preview_grid(name, images, indices, seed=args.seed, backend=args.backend)
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from None
        _write_preview_file(args.output_dir, name, grid)
    return 0


def _preview_spaces(args: argparse.Namespace) -> int:
    """`preview FILE.yaml`: a picture of each adversary's space, on one test image."""
    from robustbench_fmnist.config import load_config
    from robustbench_fmnist.data import load_fashion_mnist
    from robustbench_fmnist.errors import ConfigError
    from robustbench_fmnist.perturbations.space import Space
    from robustbench_fmnist.report.preview import space_grid

    config = load_config(args.perturbation)
    if not config.adversaries:
        raise ConfigError(f"{args.perturbation}: names no adversaries; add `adversaries:` or preview a perturbation")
    _check_preview_output(args)
    test = load_fashion_mnist(args.data_dir, verify=not args.no_verify).test
    if not 0 <= args.image < len(test.labels):
        raise ConfigError(f"--image: must lie in 0..{len(test.labels) - 1}, got {args.image}")
    image = test.images[args.image].float().div(255)
    for adversary in config.adversaries:
        grid = space_grid(adversary.name, Space.of(adversary.space), image, seed=args.seed, index=args.image)
        _write_preview_file(args.output_dir, adversary.name, grid)
    return 0


def _check_preview_output(args: argparse.Namespace) -> None:
    """The seed, and an output folder this process can write that is new or holds previews only."""
    from robustbench_fmnist.config import MAX_SEED
    from robustbench_fmnist.errors import ConfigError
    from robustbench_fmnist.files import check_replaceable, check_writable_folder

    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed: must lie in 0..2**63-1, got {args.seed}")
    check_writable_folder(args.output_dir, "--output-dir")
    check_replaceable(args.output_dir, PREVIEW)  # previews are added only to a folder of previews, or a new one


def _write_preview_file(output: Path, name: str, grid: Any) -> None:
    from robustbench_fmnist.files import MARKER, mark_folder
    from robustbench_fmnist.report.preview import write_preview

    if not (output / MARKER).exists():  # marked on its first file, so a refused preview leaves nothing
        output.mkdir(parents=True, exist_ok=True)
        mark_folder(output, PREVIEW)
    print(f"wrote {write_preview(grid, output / f'{name}.png')}")


MAX_ERROR_CHARACTERS = 500


def _one_line(exc: HarnessError, experiment: Path | None) -> str:
    """The error as one line of bounded length, a config error prefixed with its YAML file."""
    from robustbench_fmnist.config import shorten
    from robustbench_fmnist.errors import ConfigError

    text = " ".join(str(exc).split())
    if experiment is not None and isinstance(exc, ConfigError) and not text.startswith(f"{experiment}:"):
        text = f"{experiment}: {text}"
    return shorten(text, MAX_ERROR_CHARACTERS)


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_plan,
    "validate": cmd_validate,
    "ls": cmd_ls,
    "preview": cmd_preview,
    "report": cmd_report,
    "bench": cmd_bench,
    "compare": cmd_compare,
    "leaderboard": cmd_leaderboard,
    "reproduce": cmd_reproduce,
    "verify": cmd_verify,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robustbench_fmnist.progress import set_progress

    quiet = getattr(args, "quiet", False)
    set_progress(not quiet)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")
    # torch.compile on a CPU-only install warns once that it found no CUDA runtime: true, and not
    # the user's concern when the device is the CPU
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # SIGTERM cleans up like Ctrl-C (staging folders, temporary files); signals only reach the main thread
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    show_warning, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"error: {_one_line(exc, getattr(args, 'experiment', None))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; every finished task's result is kept (run again to resume), no partial report or "
            "checkpoint was written",
            file=sys.stderr,
        )
        return 130
    finally:
        warnings.showwarning = show_warning
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _warning_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    # a library's warning as one log line, not Python's two (message, then the source line)
    log.warning("%s: %s", category.__name__, " ".join(str(message).split())[:300])
