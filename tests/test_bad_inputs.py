"""Bad input, as a careless or hostile user gives it: one line on stderr, the right exit code,
nothing trained, and every file that existed before byte-identical afterwards.

Each row of CASES is one input. The case's `setup` writes whatever it needs under the test's
folder and returns the command line; the experiment YAML is the tiny synthetic one with the
row's changes. Cases that must fail before any work also check that no checkpoint or report
was written.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from robustbench_fmnist.cli import MAX_ERROR_CHARACTERS, main
from robustbench_fmnist.files import MARKER
from tests.conftest import requires_real_data

FACTORY_MODULE = '''
import torch
from torch import nn


class Fixed(nn.Module):
    """Returns whatever `make` builds from the batch: wrong shapes, dtypes or NaN on purpose."""

    def __init__(self, make):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.make = make

    def forward(self, x):
        return self.make(x) * self.scale if self.make(x).is_floating_point() else self.make(x)


def eleven(**kwargs):
    return Fixed(lambda x: torch.zeros(len(x), 11))


def integers(**kwargs):
    return Fixed(lambda x: torch.zeros(len(x), 10, dtype=torch.long))


def nan_logits(**kwargs):
    return Fixed(lambda x: torch.full((len(x), 10), float("nan")))


def _bright(x):
    # finite logits on the synthetic images (mean about 0.11), NaN once brightness_up lifts them past 0.3
    nan = x.flatten(1).mean(1, keepdim=True) > 0.3
    return torch.where(nan, float("nan"), x.flatten(1)[:, :10])


def nan_when_bright(**kwargs):
    return Fixed(_bright)


def not_a_module(**kwargs):
    return "a string"


def frozen(**kwargs):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    model.requires_grad_(False)
    return model
'''


@dataclass
class Env:
    """What a case can use: the test folder and the tiny experiment it may change."""

    root: Path
    experiment: dict[str, Any]

    def yaml(self, changes: dict[str, Any] | None = None, name: str = "exp.yaml", drop: tuple[str, ...] = ()) -> str:
        config = {k: v for k, v in {**self.experiment, **(changes or {})}.items() if k not in drop}
        path = self.root / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(path)

    @property
    def output(self) -> Path:
        return Path(self.experiment["output_dir"])


@dataclass
class Case:
    id: str
    setup: Callable[[Env], list[str]]  # writes files, returns argv
    code: int
    message: str  # must appear in the one stderr line
    nothing_done: bool = True  # no checkpoint and no report folder afterwards
    tags: tuple[str, ...] = field(default_factory=tuple)


def _folder_of_yamls(env: Env) -> list[str]:
    victim = env.root / "experiments"
    victim.mkdir()
    (victim / "mine.yaml").write_text("name: mine\n")
    (victim / "notes.txt").write_text("keep me\n")
    return ["run", env.yaml({"name": "experiments", "output_dir": str(env.root)})]


def _file_at_report_path(env: Env) -> list[str]:
    env.output.mkdir(parents=True)
    (env.output / "tiny").write_text("my notes, not a report\n")
    return ["run", env.yaml()]


def _binary_yaml(env: Env) -> list[str]:
    path = env.root / "weights.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return ["run", str(path)]


def _latin1_yaml(env: Env) -> list[str]:
    path = env.root / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    return ["validate", str(path)]


def _alias_bomb(env: Env) -> list[str]:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    body = yaml.safe_dump({k: v for k, v in env.experiment.items() if k != "models"}, sort_keys=False)
    text = "\n".join(lines) + "\n" + body + "models:\n  - name: baseline_cnn_tiny\n    kwargs: {width: *i}\n"
    path = env.root / "bomb.yaml"
    path.write_text(text)
    assert len(text.encode()) < 2000
    return ["validate", str(path)]


def _factory_module(env: Env, body: str = FACTORY_MODULE) -> str:
    """A module beside the YAML, importable under a name unique to the test."""
    name = f"user_models_{abs(hash(env.root)) % 10**8}"
    (env.root / f"{name}.py").write_text(body)
    return name


def _factory(function: str, command: str = "run") -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        module = _factory_module(env)
        return [command, env.yaml({"models": [{"name": "mine", "factory": f"{module}:{function}"}]})]

    return setup


def _factory_raising_on_import(env: Env) -> list[str]:
    module = _factory_module(env, "raise RuntimeError('this module is broken')\n")
    return ["run", env.yaml({"models": [{"name": "mine", "factory": f"{module}:build"}]})]


def _locked_folder(env: Env) -> list[str]:
    from filelock import FileLock

    env.output.mkdir(parents=True)
    lock = FileLock(env.output / ".tiny.rbfm-lock")
    # held by a second process: the lock is per process, so it must be another one
    holder = _hold_in_subprocess(lock.lock_file)
    env.root.joinpath("holder.pid").write_text(str(holder.pid))
    _HOLDERS.append(holder)
    return ["run", env.yaml()]


_HOLDERS: list[Any] = []


def _hold_in_subprocess(path: str) -> Any:
    import subprocess

    code = (
        "import sys, time\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\nlock.acquire()\n"
        "print('held', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _cache_dir_is_a_file(env: Env) -> list[str]:
    (env.root / "cache-file").write_text("not a folder\n")
    return ["run", env.yaml(), "--cache-dir", str(env.root / "cache-file")]


def _evaluations_is_a_file(env: Env) -> list[str]:
    cache = env.root / "cache"
    cache.mkdir()
    (cache / "evaluations").write_text("my notes\n")
    return ["run", env.yaml(), "--cache-dir", str(cache)]


def _cache_in_the_report(env: Env) -> list[str]:
    """`--cache-dir out/NAME` over an existing report: the report swap would delete the cache."""
    report = env.output / "tiny"
    report.mkdir(parents=True)
    _write_minimal_report(report)
    (report / MARKER).write_text('{"written_by": "robustbench_fmnist", "kind": "report"}\n')
    (report / "checkpoints").mkdir()
    (report / "checkpoints" / "mine.pt").write_bytes(b"weights I trained for a day")
    (report / "notes.md").write_text("my own notes\n")
    return ["run", env.yaml(), "--output-dir", str(env.output), "--cache-dir", str(report)]


def _cache_in_another_report(env: Env) -> list[str]:
    other = env.output / "other"
    other.mkdir(parents=True)
    _write_minimal_report(other)
    (other / MARKER).write_text('{"written_by": "robustbench_fmnist", "kind": "report"}\n')
    return ["run", env.yaml(), "--cache-dir", str(other / "cache")]


def _fifo_yaml(env: Env) -> list[str]:
    path = env.root / "fifo.yaml"
    os.mkfifo(path)  # no writer ever comes: opening it to read would block forever
    return ["validate", str(path)]


def _report_with_device(name: str) -> Callable[[Env], list[str]]:
    """`report` on a minimal report whose `name` is a link to /dev/zero: endless bytes of size 0."""

    def setup(env: Env) -> list[str]:
        folder = env.root / "reports" / "saved"
        folder.mkdir(parents=True)
        _write_minimal_report(folder)
        (folder / name).unlink()
        (folder / name).symlink_to("/dev/zero")
        return ["report", str(folder)]

    return setup


def _output_dir_is_a_file(env: Env) -> list[str]:
    (env.root / "out-file").write_text("not a folder\n")
    return ["validate", env.yaml({"output_dir": str(env.root / "out-file")})]


def _report_on(cell: str, value: str) -> Callable[[Env], list[str]]:
    """`report` on a folder whose results.csv has `value` in column `cell` of its first row."""

    def setup(env: Env) -> list[str]:
        import pandas as pd

        folder = env.root / "reports" / "saved"
        folder.mkdir(parents=True)
        _write_minimal_report(folder)
        results = pd.read_csv(folder / "results.csv", dtype=str, keep_default_na=False)
        results.loc[0, cell] = value
        results.to_csv(folder / "results.csv", index=False)
        return ["report", str(folder)]

    return setup


def _report_of_cwd(env: Env) -> list[str]:
    folder = env.root / "reports" / "saved"
    folder.mkdir(parents=True)
    _write_minimal_report(folder)
    os.chdir(folder)
    return ["report", "."]


def _write_minimal_report(folder: Path) -> None:
    """The data files of a one-model, one-cell report, as `run` writes them."""
    import json

    columns = (
        "model,seed,perturbation,severity,parameter,backend,n_images,n_correct,accuracy,error,accuracy_low,"
        "accuracy_high,flip_rate,flip_rate_step,ece,mean_confidence,nll,seconds,nonfinite_images"
    )
    rows = [
        "m,0,clean,0,,,100,90,0.9,0.1,0.83,0.94,,,0.05,0.9,0.3,0.1,0",
        "m,0,brightness_up,1,0.1,torch,100,80,0.8,0.2,0.71,0.87,0.1,0.1,0.05,0.8,0.5,0.1,0",
    ]
    (folder / "results.csv").write_text(columns + "\n" + "\n".join(rows) + "\n")
    (folder / "per_class.csv").write_text("model,seed,perturbation,severity,class,n_images,n_correct,accuracy\n")
    (folder / "confusion.csv").write_text("model,seed,perturbation,severity,true,predicted,count\n")
    (folder / "calibration.csv").write_text(
        "model,seed,perturbation,severity,bin,lower,upper,count,accuracy,confidence\n"
    )
    perturbations = [{"name": "brightness_up", "family": "lighting", "unit": "added intensity"}]
    run = {"config": {"name": "saved"}, "environment": {}, "perturbations": perturbations, "models": []}
    (folder / "run.json").write_text(json.dumps(run))


def _compare_into_my_folder(env: Env) -> list[str]:
    first, second, mine = env.root / "reports" / "a", env.root / "reports" / "b", env.root / "mine"
    for folder in (first, second, mine):
        folder.mkdir(parents=True)
    _write_minimal_report(first)
    _write_minimal_report(second)
    (mine / "compare.md").write_text("my own notes\n")
    return ["compare", str(first), str(second), "--output-dir", str(mine)]


def _preview_into_my_folder(env: Env) -> list[str]:
    mine = env.root / "pictures"
    mine.mkdir()
    (mine / "rotation.png").write_bytes(b"my own picture")
    return ["preview", "rotation", "--output-dir", str(mine)]


def _results_with(mutate: Callable[[Any], None]) -> Callable[[Env], list[str]]:
    """`report` on a minimal report whose results table `mutate` changed."""

    def setup(env: Env) -> list[str]:
        import pandas as pd

        folder = env.root / "reports" / "saved"
        folder.mkdir(parents=True)
        _write_minimal_report(folder)
        results = pd.read_csv(folder / "results.csv")
        mutate(results)
        results.to_csv(folder / "results.csv", index=False)
        return ["report", str(folder)]

    return setup


def _run_over_device(env: Env) -> list[str]:
    """A folder at the report path with no marker, its run.json a link to /dev/zero: read to find its kind."""
    (env.output / "tiny").mkdir(parents=True)
    (env.output / "tiny" / "run.json").symlink_to("/dev/zero")
    return ["run", env.yaml()]


def _leaderboard_of(mutate: Callable[[Any], None]) -> Callable[[Env], list[str]]:
    """`leaderboard` of a minimal report whose results table `mutate` changed."""

    def setup(env: Env) -> list[str]:
        argv = _results_with(mutate)(env)
        return ["leaderboard", argv[1], "--output-dir", str(env.root / "board")]

    return setup


def _duplicate_key(env: Env) -> list[str]:
    path = Path(env.yaml())
    path.write_text("seed: -1\n" + path.read_text())  # the file's own `seed: 0` comes later
    return ["validate", str(path)]


def _sparse_checkpoint(env: Env) -> list[str]:
    from robustbench_fmnist.models import create_model

    state = create_model("baseline_cnn_tiny").state_dict()
    first = next(iter(state))
    state[first] = state[first].to_sparse()
    torch.save(state, env.root / "sparse.pt")
    model = {"name": "m", "factory": "robustbench_fmnist.models.baseline:baseline_cnn_tiny", "checkpoint": "sparse.pt"}
    return ["validate", env.yaml({"models": [model]})]


def _checkpoint_is_a_folder(env: Env) -> list[str]:
    (env.root / "weights.pt").mkdir()
    model = {"name": "m", "factory": "robustbench_fmnist.models.baseline:baseline_cnn_tiny", "checkpoint": "weights.pt"}
    return ["validate", env.yaml({"models": [model]})]


def _empty_test_set(env: Env) -> list[str]:
    import numpy as np

    from tests.conftest import write_idx

    data = Path(env.experiment["data"]["dir"])
    write_idx(data / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(data / "t10k-labels-idx1-ubyte", np.zeros((0,), dtype=np.uint8))
    return ["run", env.yaml()]


def _factory_exiting_on_import(env: Env) -> list[str]:
    module = _factory_module(env, "import sys\nsys.exit('no GPU, bye')\n")
    return ["validate", env.yaml({"models": [{"name": "mine", "factory": f"{module}:build"}]})]


def _compare_into_sys(env: Env) -> list[str]:
    first, second = env.root / "reports" / "a", env.root / "reports" / "b"
    for folder in (first, second):
        folder.mkdir(parents=True)
        _write_minimal_report(folder)
    return ["compare", str(first), str(second), "--output-dir", "/sys/kernel/rbfm-compare"]


def _one_seed_report(env: Env) -> Path:
    folder = env.root / "reports" / "one-seed"
    folder.mkdir(parents=True)
    _write_minimal_report(folder)
    return folder


def _reproduce_one_seed(env: Env) -> list[str]:
    return ["reproduce", str(_one_seed_report(env))]


def _noise_from_one_seed(env: Env) -> list[str]:
    return ["validate", env.yaml({"noise_from": str(_one_seed_report(env))})]


def _noise_from_own_folder(env: Env) -> list[str]:
    return ["validate", env.yaml({"noise_from": str(env.output / "tiny")})]


def _compare_noise_one_seed(env: Env) -> list[str]:
    folder = _one_seed_report(env)
    return ["compare", str(folder), str(folder), "--noise-from", str(folder), "--output-dir", str(env.root / "c")]


def _compare_unknown_model(env: Env) -> list[str]:
    folder = _one_seed_report(env)
    return ["compare", str(folder), str(folder), "--model-a", "nope", "--output-dir", str(env.root / "c")]


def _changes(changes: dict[str, Any], command: str = "run", *extra: str) -> Callable[[Env], list[str]]:
    return lambda env: [command, env.yaml(changes), *extra]


def _adversaries(*adversaries: dict[str, Any]) -> Callable[[Env], list[str]]:
    """`validate` with these `adversaries:` (a space given as a string names an earlier adversary)."""
    return _changes({"adversaries": list(adversaries)}, "validate")


SPATIAL = {"name": "spatial", "space": {"rotation": [-30, 30, 31], "translate": [-3, 3, 5]}, "search": "grid"}


def _tta(space: Any) -> Callable[[Env], list[str]]:
    """`run` with test-time augmentation over `space`: stopped before any training."""
    return _changes({"evaluation": {"batch_size": 64, "adaptation": ["none", "tta"], "tta": {"space": space}}})


CASES = [
    # data loss: nothing the harness did not write is replaced
    Case("run over a folder of YAMLs", _folder_of_yamls, 2, "not written by robustbench_fmnist"),
    Case("run over a plain file", _file_at_report_path, 2, "exists and is not a folder"),
    Case("validate output_dir / name etc", _changes({"output_dir": "/", "name": "etc"}, "validate"), 2, "/etc exists"),
    Case("run while another run holds the folder", _locked_folder, 2, "being written by another"),
    Case("compare into a folder of mine", _compare_into_my_folder, 2, "not written by robustbench_fmnist"),
    Case("preview into a folder of mine", _preview_into_my_folder, 2, "not written by robustbench_fmnist"),
    # late failures, now caught before any work
    Case("output_dir is a file", _output_dir_is_a_file, 2, "is a file, not a folder"),
    Case("output_dir not writable", _changes({"output_dir": "/sys/rbfm-reports"}, "validate"), 2, "not writable"),
    Case("name of 300 characters", _changes({"name": "n" * 300}), 2, "name: String should have at most 200"),
    Case("unknown executor", _changes({"executor": {"kind": "slurm"}}), 2, "executor.kind: unknown executor 'slurm'"),
    Case("address without ray", _changes({"executor": {"address": "auto"}}), 2, "is for kind: ray"),
    Case("executor retries -1", _changes({"executor": {"retries": -1}}), 2, "executor.retries"),
    Case("unknown backend", _changes({"evaluation": {"backend": "opencv"}}), 2, "unknown perturbation backend"),
    Case("evaluation.compile sometimes", _changes({"evaluation": {"compile": "sometimes"}}), 2, "evaluation.compile"),
    Case("seed beyond 64 bits", _changes({"seed": 18446744073709551616}), 2, "seed: Input should be less than"),
    Case("seeds beyond 64 bits", _changes({"seeds": [0, 2**64]}), 2, "seeds must lie in 0..2**63-1"),
    Case(
        "severities [0]", _changes({"perturbations": [{"name": "rotation", "severities": [0]}]}), 2, "only severity 0"
    ),
    Case("cache dir is a file", _cache_dir_is_a_file, 2, "cache_dir"),
    Case(
        "cache's evaluations/ is a file", _evaluations_is_a_file, 2, "is a file, where the cache keeps its evaluation"
    ),
    Case("cache dir inside the report folder", _cache_in_the_report, 2, "is the report folder itself"),
    Case(
        "cache dir is the report path, not there yet",
        lambda env: ["run", env.yaml(), "--cache-dir", str(env.output / "tiny")],
        2,
        "is the report folder itself",
    ),
    Case(
        "cache dir below the report path",
        lambda env: ["run", env.yaml(), "--cache-dir", str(env.output / "tiny" / "cache")],
        2,
        "lies inside the report folder",
    ),
    Case(
        "report folder inside the cache",
        lambda env: ["run", env.yaml(), "--cache-dir", str(env.output)],
        2,
        "lies inside cache_dir",
    ),
    Case("cache dir inside another report", _cache_in_another_report, 2, "a report folder the harness replaces"),
    Case(
        "missing checkpoint",
        _changes(
            {
                "models": [
                    {
                        "name": "m",
                        "factory": "robustbench_fmnist.models.baseline:baseline_cnn_tiny",
                        "checkpoint": "x.pt",
                    }
                ]
            }
        ),
        2,
        "does not exist",
    ),
    Case("cuda on a CPU machine", _changes({"device": "cuda"}, "validate"), 2, "no CUDA GPU is visible", tags=("cpu",)),
    Case(
        "learning rate inf",
        _changes({"models": [{"name": "baseline_cnn_tiny", "train": {"lr": float("inf")}}]}),
        2,
        "finite",
    ),
    # tracebacks where one line is promised
    Case("binary YAML", _binary_yaml, 2, "not UTF-8 text"),
    Case("latin-1 YAML", _latin1_yaml, 2, "not UTF-8 text"),
    Case("a folder as the YAML", lambda env: ["run", str(env.root)], 2, "is a folder; give a YAML file"),
    Case("validate /dev/zero", lambda env: ["validate", "/dev/zero"], 2, "is a character device, not a regular file"),
    Case("run /dev/urandom", lambda env: ["run", "/dev/urandom"], 2, "is a character device, not a regular file"),
    Case("a FIFO as the YAML", _fifo_yaml, 2, "is a FIFO (named pipe), not a regular file"),
    Case("run over a folder whose run.json is /dev/zero", _run_over_device, 2, "not written by robustbench_fmnist"),
    Case("report with run.json from /dev/zero", _report_with_device("run.json"), 1, "is a character device"),
    Case("report with results.csv from /dev/zero", _report_with_device("results.csv"), 1, "is a character device"),
    Case("factory raising on import", _factory_raising_on_import, 2, "raised RuntimeError: this module is broken"),
    Case("model output (N, 11)", _factory("eleven"), 2, "shape (2, 11)"),
    Case("model output integers", _factory("integers", "validate"), 2, "torch.int64 logits"),
    Case("factory returning a string", _factory("not_a_module"), 2, "not an nn.Module"),
    Case("report with a word in accuracy", _report_on("accuracy", "high"), 1, "column 'accuracy' holds 'high'"),
    Case("report with nan in accuracy", _report_on("accuracy", "nan"), 1, "column 'accuracy' holds 'nan'"),
    Case("report with an empty accuracy", _report_on("accuracy", ""), 1, "has no accuracy but is not marked invalid"),
    Case("report of the current folder", _report_of_cwd, 2, "holds the current folder"),
    Case("report of a plain folder", lambda env: ["report", str(env.root)], 1, "results.csv: missing"),
    Case("report with accuracy 7.5", _results_with(lambda r: r.__setitem__("accuracy", 7.5)), 1, "outside 0..1"),
    Case(
        "report whose accuracy its counts contradict",
        _results_with(lambda r: r.__setitem__("accuracy", [0.95, 0.8])),
        1,
        "results.csv: line 2 has an accuracy that is not n_correct / n_images",
    ),
    Case(
        "leaderboard of a row whose accuracy its counts contradict",
        _leaderboard_of(lambda r: r.__setitem__("accuracy", [0.9, 0.95])),
        1,
        "results.csv: line 3 has an accuracy that is not n_correct / n_images",
    ),
    Case("report with severity -7", _results_with(lambda r: r.__setitem__("severity", -7)), 1, "negative severity"),
    Case("report with no images", _results_with(lambda r: r.__setitem__("n_images", 0)), 1, "counts no images"),
    Case(
        "report with a repeated cell",
        _results_with(lambda r: r.__setitem__("perturbation", "clean") or r.__setitem__("severity", 0)),
        1,
        "repeats a (model, seed, perturbation, severity) cell",
    ),
    Case("compare into /sys", _compare_into_sys, 2, "not writable"),
    # training noise: a one-seed report has no spread to set anything against
    Case("reproduce a one-seed report", _reproduce_one_seed, 2, "needs a report of at least 2 seeds"),
    Case("noise_from a one-seed report", _noise_from_one_seed, 2, "noise_from: "),
    Case("noise_from a missing folder", _changes({"noise_from": "/nonexistent"}, "validate"), 2, "no such report"),
    Case("noise_from the run's own folder", _noise_from_own_folder, 2, "this run's own report folder"),
    Case("compare --noise-from a one-seed report", _compare_noise_one_seed, 2, "--noise-from: "),
    Case("compare --model-a that A lacks", _compare_unknown_model, 2, "--model-a: 'nope' is not a model"),
    Case("duplicate key in the YAML", _duplicate_key, 2, "key 'seed' appears twice"),
    # remedies: test-time adaptation and robust training
    Case(
        "adaptation bm",
        _changes({"evaluation": {"adaptation": ["none", "bm"]}}, "validate"),
        2,
        "'bn', 'tent' or 'tta'",
    ),
    Case(
        "adaptation on 3 test images",
        _changes({"evaluation": {"adaptation": ["none", "bn"], "test_images": 3}}, "validate"),
        2,
        "needs at least 4 images",
    ),
    Case("adaptation without none", _changes({"evaluation": {"adaptation": ["bn"]}}, "validate"), 2, "lacks none"),
    Case(
        "adaptation in bfloat16",
        _changes({"evaluation": {"adaptation": ["none", "bn"], "precision": "bfloat16"}}, "validate"),
        2,
        "adaptation runs in float32",
    ),
    Case(
        "an adapted label that clashes",
        _changes(
            {
                "models": [
                    {"name": "deep_cnn_tiny", "adaptation": ["none", "bn"]},
                    {"name": "deep_cnn_tiny+bn", "architecture": "deep_cnn_tiny"},
                ]
            },
            "validate",
        ),
        2,
        "model 'deep_cnn_tiny+bn' is listed twice",
    ),
    Case(
        "architecture unknown",
        _changes({"models": [{"name": "mine", "architecture": "deep_cnn_tin"}]}, "validate"),
        2,
        "models[0].architecture: unknown model 'deep_cnn_tin'; did you mean 'deep_cnn_tiny'?",
    ),
    Case(
        "robust_augment method unknown",
        _changes({"models": [{"name": "deep_cnn_tiny", "train": {"robust_augment": "augmx"}}]}, "validate"),
        2,
        "does not match any of the expected tags",
    ),
    Case(
        "suite augmentation of an unknown perturbation",
        _changes(
            {
                "models": [
                    {
                        "name": "deep_cnn_tiny",
                        "train": {"robust_augment": {"method": "suite", "perturbations": ["brightnes_up"]}},
                    }
                ]
            },
            "validate",
        ),
        2,
        "models[0].train.robust_augment.perturbations: unknown perturbation 'brightnes_up'",
    ),
    Case(
        "suite severities reversed",
        _changes(
            {
                "models": [
                    {
                        "name": "deep_cnn_tiny",
                        "train": {
                            "robust_augment": {"method": "suite", "perturbations": ["rotation"], "severities": [3, 1]}
                        },
                    }
                ]
            },
            "validate",
        ),
        2,
        "1 <= low <= high <= 5",
    ),
    Case("threads 100000", _changes({"threads": 100000}, "validate"), 2, "threads: Input should be less than"),
    Case("bench batch size 10**10", _changes({"throughput": {"batch_sizes": [10**10]}}, "bench"), 2, "batch sizes"),
    Case(
        "registered model with kwargs it rejects",
        _changes({"models": [{"name": "baseline_cnn", "kwargs": {"width": 0}}]}, "validate"),
        2,
        "model 'baseline_cnn': a forward pass on a (2, 1, 28, 28) batch raised RuntimeError",
    ),
    Case("factory model with nothing to train", _factory("frozen", "validate"), 2, "no trainable parameters"),
    Case("model name of 300 characters", _changes({"models": [{"name": "m" * 300}]}, "validate"), 2, "at most 100"),
    Case("model name with a '|'", _changes({"models": [{"name": "a|b"}]}, "validate"), 2, "models[0].name"),
    Case("sparse tensor in a checkpoint", _sparse_checkpoint, 2, "sparse_coo tensor"),
    Case("checkpoint that is a folder", _checkpoint_is_a_folder, 2, "is not a regular file"),
    Case("empty test set", _empty_test_set, 1, "no images"),
    Case("factory calling sys.exit on import", _factory_exiting_on_import, 2, "raised SystemExit: no GPU, bye"),
    Case(
        "preview without an albumentations backend",
        lambda env: ["preview", "shot_noise", "--backend", "albumentations", "--output-dir", str(env.root / "p")],
        2,
        "no albumentations backend",
    ),
    # code from YAML
    Case(
        "factory os:system",
        _changes({"models": [{"name": "m", "factory": "os:system", "kwargs": {"command": "touch pwned"}}]}),
        2,
        "standard library",
    ),
    Case(
        "factory builtins:eval",
        _changes({"models": [{"name": "m", "factory": "builtins:eval"}]}, "validate"),
        2,
        "standard library",
    ),
    Case("YAML alias bomb", _alias_bomb, 2, "aliases expand to more than"),
    Case(
        "factory yaml:unsafe_load",
        _changes(
            {
                "models": [
                    {
                        "name": "m",
                        "factory": "yaml:unsafe_load",
                        "kwargs": {"stream": "!!python/object/apply:os.system ['touch pwned']"},
                    }
                ]
            },
            "validate",
        ),
        2,
        "builds no models",
    ),
    Case(
        "factory torch:load",
        _changes({"models": [{"name": "m", "factory": "torch:load"}]}, "validate"),
        2,
        "builds no models",
    ),
    # names
    Case("ls with a pattern nothing matches", lambda env: ["ls", "zzz*"], 2, "nothing matches 'zzz*'"),
    Case("ls with two kinds", lambda env: ["ls", "models", "perturbations"], 2, "at most one kind"),
    Case("preview with a negative seed", lambda env: ["preview", "rotation", "--seed", "-1"], 2, "--seed"),
    Case("preview of a YAML without adversaries", _changes({}, "preview"), 2, "names no adversaries"),
    Case(
        "preview of an adversary space on a test image that does not exist",
        _changes({"adversaries": [SPATIAL]}, "preview", "--image", "10000000"),
        2,
        "--image: must lie in 0..",
    ),
    Case("unknown model name", _changes({"models": ["baseline_cnnn"]}), 2, "exp.yaml: models[0].name: unknown model"),
    Case(
        "unknown perturbation name",
        _changes({"perturbations": ["brightnes"]}, "validate"),
        2,
        "exp.yaml: perturbations[0].name",
    ),
    # the zoo: timm names, pretrained weights, one model of an experiment
    Case(
        "unknown timm model",
        _changes({"models": ["timm:resnet81"]}, "validate"),
        2,
        "models[0].name: unknown timm model 'resnet81'; did you mean timm:resnet18",
    ),
    Case(
        "unknown timm architecture of a label",
        _changes({"models": [{"name": "mine", "architecture": "timm:convnxt_atto"}]}),
        2,
        "models[0].architecture: unknown timm model 'convnxt_atto'; did you mean timm:convnext_atto",
    ),
    Case(
        "pretrained timm weights",
        _changes({"models": [{"name": "timm:resnet18", "kwargs": {"pretrained": True}}]}),
        2,
        "trains every model from scratch (drop `pretrained`",
    ),
    Case(
        "timm input_size not a size",
        _changes({"models": [{"name": "timm:resnet18", "kwargs": {"input_size": "big"}}]}),
        2,
        "input_size must be a whole number of pixels",
    ),
    Case(
        "timm family that does not fit 28 px",
        _changes({"models": ["timm:swin_tiny_patch4_window7_224"]}),
        2,
        "or input_size: N to resize the images",
    ),
    Case(
        "--model not in the experiment",
        lambda env: ["run", env.yaml(), "--model", "baseline_cnn_tny"],
        2,
        "--model 'baseline_cnn_tny': not a model of tiny; did you mean 'baseline_cnn_tiny'?",
    ),
    Case("ls --timm matching nothing", lambda env: ["ls", "--timm", "zzz*"], 2, "no timm model matches 'zzz*'"),
    Case("ls --timm of perturbations", lambda env: ["ls", "perturbations", "--timm"], 2, "ls --timm lists timm's"),
    # the worst case: adversaries' spaces and searches
    Case(
        "adversary axis misspelt",
        _adversaries({"name": "a", "space": {"rotaton": [-30, 30, 31]}, "search": "grid"}),
        2,
        "adversaries[0].space: unknown axis 'rotaton'; did you mean 'rotation'?",
    ),
    Case(
        "adversary axis of 0 points",
        _adversaries({"name": "a", "space": {"rotation": [-30, 30, 0]}, "search": "grid"}),
        2,
        "adversaries[0].space.rotation: points 0: an axis needs at least 1",
    ),
    Case(
        "adversary axis low above high",
        _adversaries(SPATIAL, {"name": "b", "space": {"rotation": [30, -30, 31]}, "search": "grid"}),
        2,
        "adversaries[1].space.rotation: low 30 > high -30",
    ),
    Case(
        "adversary axis beyond its kernel",
        _adversaries({"name": "a", "space": {"contrast": [-1, 1, 5]}, "search": "grid"}),
        2,
        "adversaries[0].space.contrast: [-1, 1] reaches outside [0, 10]",
    ),
    Case(
        "worst_of_k with k above the space's points",
        _adversaries({"name": "a", "space": {"rotation": [-30, 30, 7]}, "search": "worst_of_k", "k": 10}),
        2,
        "adversaries[0].k: 10 is more than the space's 7 points",
    ),
    Case(
        "worst_of_k without k",
        _adversaries(SPATIAL, {"name": "b", "space": "spatial", "search": "worst_of_k"}),
        2,
        "adversaries[1].k: search worst_of_k needs k",
    ),
    Case(
        "grid over max_points",
        _adversaries({"name": "a", "space": {"rotation": [-30, 30, 601], "translate": [-3, 3, 5]}, "search": "grid"}),
        2,
        "adversaries[0].space: 15,025 points, more than max_points 10,000; a grid evaluates every one: 15,025 forward "
        "passes per image; raise `max_points:` to allow it",
    ),
    Case(
        "adversary space naming an unknown adversary",
        _adversaries(SPATIAL, {"name": "b", "space": "spatal", "search": "random"}),
        2,
        "adversaries[1].space: no earlier adversary is named 'spatal'; did you mean 'spatial'?",
    ),
    Case(
        "adversary listed twice",
        _adversaries(SPATIAL, {**SPATIAL, "search": "random"}),
        2,
        "adversaries[1].name: adversary 'spatial' is listed twice (also adversaries[0])",
    ),
    Case(
        "gradient over a perturbation kernel",
        _adversaries({"name": "a", "space": {"gaussian_noise": [0, 0.2, 5]}, "search": "gradient"}),
        2,
        "adversaries[0].space.gaussian_noise: search gradient cannot follow 'gaussian_noise'",
    ),
    Case(
        "against names no model of the experiment",
        _changes({"models": ["baseline_cnn_tiny", {"name": "p4_cnn_tiny", "against": "baseline_cnn_tny"}]}, "validate"),
        2,
        "models[1].against: 'baseline_cnn_tny' is not another model of the experiment; did you mean "
        "'baseline_cnn_tiny'?",
    ),
    # training over a space
    Case(
        "worst_of_k training axis misspelt",
        _changes(
            {
                "models": [
                    {
                        "name": "baseline_cnn_tiny",
                        "train": {"robust_augment": {"method": "worst_of_k", "space": {"rotaton": [-30, 30, 7]}}},
                    }
                ]
            }
        ),
        2,
        "models[0].train.robust_augment.space: unknown axis 'rotaton'; did you mean 'rotation'?",
    ),
    Case(
        "worst_of_k with k over its limit",
        _changes(
            {
                "models": [
                    {
                        "name": "baseline_cnn_tiny",
                        "train": {
                            "robust_augment": {"method": "worst_of_k", "space": {"rotation": [-30, 30, 7]}, "k": 500}
                        },
                    }
                ]
            },
            "validate",
        ),
        2,
        "less than or equal to 100",
    ),
    Case(
        "training space with too many points",
        _changes(
            {
                "models": [
                    {
                        "name": "baseline_cnn_tiny",
                        "train": {
                            "robust_augment": {
                                "method": "random_point",
                                "space": {"rotation": [-30, 30, 601], "translate": [-3, 3, 7]},
                            }
                        },
                    }
                ]
            },
            "validate",
        ),
        2,
        "robust_augment.random_point.space: 29,449 points, more than 10,000; give the axes fewer points",
    ),
    # test-time augmentation's copies
    Case(
        "tta axis misspelt",
        _tta({"rotaton": [-20, 20, 5]}),
        2,
        "evaluation.tta.space: unknown axis 'rotaton'; did you mean 'rotation'?",
    ),
    Case(
        "tta with no copy",
        _tta({"rotation": [-20, 20, 0]}),
        2,
        "evaluation.tta.space.rotation: points 0: an axis needs at least 1",
    ),
    Case("tta with no axis", _tta({}), 2, "evaluation.tta.space: empty; name at least one axis"),
    Case(
        "tta angles beyond the kernel",
        _tta({"rotation": [-400, 0, 5]}),
        2,
        "evaluation.tta.space.rotation: [-400, 0] reaches outside [-180, 180]",
    ),
    Case(
        "tta over a perturbation kernel",
        _tta({"gaussian_noise": [0, 0.1, 3]}),
        2,
        "evaluation.tta.space.gaussian_noise: a perturbation's kernel draws per test image",
    ),
    Case(
        "tta with too many copies",
        _tta({"rotation": [-30, 30, 11], "translate": [-2, 2, 5]}),
        2,
        "evaluation.tta.space: 275 copies, more than 100: each costs a forward pass",
    ),
]


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def env(tmp_path: Path, tiny_experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.syspath_prepend(str(tmp_path))  # factories written beside the YAML are importable
    monkeypatch.chdir(tmp_path)
    yield Env(tmp_path, tiny_experiment)
    for holder in _HOLDERS:
        holder.kill()
        holder.wait()
    _HOLDERS.clear()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_stops_with_one_line_and_touches_nothing(
    case: Case, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    if "cpu" in case.tags and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    argv = case.setup(env)
    before = _snapshot(env.root)
    capsys.readouterr()
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert code == case.code, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert case.message in err, err
    assert len(err) <= len("error: ") + MAX_ERROR_CHARACTERS + 1
    after = _snapshot(env.root)
    changed = [p for p, content in before.items() if after.get(p) != content]
    assert not changed, f"changed or deleted: {changed}"
    if case.nothing_done:
        new = [p for p in after if p not in before and not p.name.endswith(".rbfm-lock")]
        assert not new, f"written although the input was bad: {new}"
    assert not (env.root / "pwned").exists()


@pytest.mark.parametrize("factory", ["nan_logits", "nan_when_bright"])
def test_nan_logits_mark_the_cells_invalid_instead_of_scoring_them(
    factory: str, env: Env, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import pandas as pd

    module = _factory_module(env)
    checkpoint = env.root / "nan.pt"
    torch.save({"scale": torch.ones(())}, checkpoint)
    config = {"models": [{"name": "nan_model", "factory": f"{module}:{factory}", "checkpoint": str(checkpoint)}]}
    # the probe batch is all zeros: NaN logits are not a shape or dtype error, so the run goes ahead
    assert main(["-q", "run", env.yaml(config)]) == 0
    results = pd.read_csv(env.output / "tiny" / "results.csv")
    invalid = results[results["nonfinite_images"] > 0]
    if factory == "nan_logits":
        assert (results["nonfinite_images"] == 200).all()
    else:
        assert set(invalid["perturbation"]) == {"brightness_up"} and len(invalid) >= 2
        assert results.loc[results["nonfinite_images"] == 0, "accuracy"].notna().all()
    assert invalid[["accuracy", "n_correct", "ece", "nll"]].isna().all().all()
    warnings = [r.getMessage() for r in caplog.records if "marked invalid" in r.getMessage()]
    assert len(warnings) == len(invalid)
    md = (env.output / "tiny" / "report.md").read_text()
    plural = "s" if len(invalid) > 1 else ""
    assert f"Warning: {len(invalid)} invalid cell{plural}" in md and "| n/a |" in md
    assert main(["-q", "report", str(env.output / "tiny")]) == 0, capsys.readouterr().err


def test_a_report_folder_is_replaced_and_its_neighbours_kept(env: Env) -> None:
    (env.output).mkdir(parents=True)
    (env.output / "notes.md").write_text("mine\n")
    path = env.yaml({"models": ["baseline_cnn_tiny"], "perturbations": [{"name": "rotation", "severities": [5]}]})
    assert main(["-q", "run", path]) == 0
    assert json_kind(env.output / "tiny") == "report"
    assert main(["-q", "run", path]) == 0, "a report the harness wrote is replaced"
    assert (env.output / "notes.md").read_text() == "mine\n"
    assert sorted(p.name for p in env.output.iterdir()) == [".tiny.rbfm-lock", "notes.md", "tiny"]


def json_kind(folder: Path) -> str:
    import json

    return json.loads((folder / MARKER).read_text())["kind"]


def test_relative_paths_in_a_yaml_are_taken_from_its_folder(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_fmnist.config import load_config

    sub = env.root / "configs"
    sub.mkdir()
    changes = {"output_dir": "out", "cache_dir": "../cache", "data": {"dir": "data"}}
    changes["models"] = [
        {"name": "m", "factory": "x.y:z", "checkpoint": "w.pt"},
        {"name": "o", "onnx": "models/m.onnx"},
        {"name": "k", "keras": "k.keras"},
    ]
    path = Path(env.yaml(changes, name="configs/exp.yaml"))
    monkeypatch.chdir("/")
    config = load_config(path, {"cache_dir": "flag-cache"})
    assert config.output_dir == sub / "out" and config.data.dir == sub / "data"
    assert config.models[0].checkpoint == sub / "w.pt"
    assert Path(config.models[1].onnx) == sub / "models" / "m.onnx" and Path(config.models[2].keras) == sub / "k.keras"
    assert config.cache_dir == Path("flag-cache"), "a flag's path is the user's, taken from the working folder"
    home = load_config(Path(env.yaml({"output_dir": "~/rbfm-reports"}, name="configs/home.yaml")))
    assert home.output_dir == Path.home() / "rbfm-reports"


def test_a_relative_path_climbs_from_where_a_symlinked_folder_points(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_fmnist.config import load_config

    real = env.root / "deep" / "sub"
    real.mkdir(parents=True)
    (env.root / "link").symlink_to(real)
    (real / "x.yaml").write_text(yaml.safe_dump({**env.experiment, "output_dir": "../out"}))
    config = load_config(Path("link") / "x.yaml")
    assert config.output_dir.resolve() == (env.root / "deep" / "out").resolve()


def test_cache_dir_flag_yaml_key_and_environment_variable_name_one_layout(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustbench_fmnist.training.checkpoints import checkpoint_dir

    root = env.root / "cache"
    monkeypatch.setenv("RBFM_CACHE_DIR", str(root))
    assert checkpoint_dir(None) == checkpoint_dir(root) == root / "checkpoints"


@pytest.mark.parametrize(
    ("argv", "shown", "hidden"),
    [
        (["ls", "*cnn*"], "baseline_cnn", "timm_resnet18"),
        (["ls", "models", "*cnn*"], "baseline_cnn", "perturbations:"),
        (["ls", "gamma_*", "--markdown"], "gamma_up", "rotation"),
    ],
)
def test_ls_takes_a_pattern_in_any_position(
    argv: list[str], shown: str, hidden: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert shown in out and hidden not in out


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"test_images": 0}, "test_images"),
        ({"seed": -1}, "seed"),
        ({"precision": "float8"}, "precision"),
        ({"perturbations": "rotation"}, "perturbations"),
        ({"model": "resnet"}, "model"),
        ({"perturbations": []}, "perturbations"),
        ({"perturbations": None}, "perturbations"),
        ({"perturbations": 5}, "perturbations"),
        ({"severities": [0]}, "severities"),
        ({"severities": 3}, "severities"),
        ({"device": "gpu"}, "device"),
        ({"device": None}, "device"),
        ({"precision": ["float32"]}, "precision"),
        ({"name": None}, "name"),
        ({"data_dir": 5}, "data_dir"),
        ({"perturbations": ["rotation", "contrast_down", "rotation"]}, "perturbations"),
        ({"severities": [1, 3, 1]}, "severities"),
    ],
)
def test_the_python_api_names_a_bad_argument(arguments: dict[str, Any], named: str) -> None:
    from robustbench_fmnist import evaluate_module
    from robustbench_fmnist.models import create_model

    arguments = {"model": create_model("baseline_cnn_tiny"), **arguments}
    with pytest.raises(ValueError, match=rf"^{named}: "):
        evaluate_module(arguments.pop("model"), **arguments)


def _meta_model() -> torch.nn.Module:
    with torch.device("meta"):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))


def _rgb_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_meta_model, "model: its weights are on the meta device"),
        (_rgb_model, "model: a forward pass on a (2, 1, 28, 28) batch raised RuntimeError"),
        (lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 11)), "model: model 'm' returned"),
    ],
)
def test_the_python_api_probes_the_model_before_reading_data(
    build: Callable[[], torch.nn.Module], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustbench_fmnist import evaluate_module
    from robustbench_fmnist.orchestration import user_module

    def no_data(*args: object) -> None:
        raise AssertionError("read the data although the model cannot run")

    monkeypatch.setattr(user_module, "load_fashion_mnist", no_data)
    model = build().train()
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        evaluate_module(model, name="m", device="cpu")
    assert "\n" not in str(raised.value) and len(str(raised.value)) <= MAX_ERROR_CHARACTERS
    assert all(m.training for m in model.modules()), "the caller's model keeps its mode"


@pytest.mark.parametrize(
    ("images", "labels", "model", "message"),
    [
        (torch.rand(8, 28, 28), torch.zeros(8, dtype=torch.long), None, "images[:, None] for (N, H, W) grey images"),
        (torch.rand(8, 1, 28, 28), torch.zeros(7, dtype=torch.long), None, "7 labels for 8 images; give one label"),
        (torch.rand(8, 1, 28, 28), torch.arange(8) + 5, None, "labels range over 5..12; Fashion-MNIST's classes"),
        (torch.rand(8, 1, 28, 28), torch.zeros(8), None, "labels must be a 1-D integer tensor"),
        (torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long), _meta_model, "weights are on the meta device"),
    ],
    ids=["rank 3 images", "labels too few", "labels out of range", "float labels", "meta model"],
)
def test_the_sweep_api_names_bad_images_labels_and_models(
    images: torch.Tensor, labels: torch.Tensor, model: Callable[[], torch.nn.Module] | None, message: str
) -> None:
    from robustbench_fmnist.evaluation.cells import sweep_cells
    from robustbench_fmnist.evaluation.sweep import evaluate_cells
    from robustbench_fmnist.models import create_model

    built = model() if model is not None else create_model("baseline_cnn_tiny")
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        evaluate_cells(built, "m", images, labels, sweep_cells([("rotation", [1])]), device=torch.device("cpu"))
    assert "\n" not in str(raised.value)


@requires_real_data
def test_the_python_api_leaves_threads_and_denormals_as_it_found_them() -> None:
    from robustbench_fmnist import evaluate_module
    from robustbench_fmnist.models import create_model
    from robustbench_fmnist.runtime import denormals_flushed

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    try:
        rows = evaluate_module(
            create_model("baseline_cnn_tiny"),
            perturbations=iter(["rotation"]),
            severities=[1],
            device="cpu",
            test_images=50,
        )
        assert list(rows["perturbation"]) == ["clean", "rotation"], "an iterator of names is read once, whole"
        assert torch.get_num_threads() == 1 and not denormals_flushed()
    finally:
        torch.set_num_threads(threads)


def test_a_diverging_model_fails_with_its_whole_reason(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    module = _factory_module(env)
    model = {"name": "mine", "factory": f"{module}:nan_logits", "train": {"epochs": 1, "batch_size": 64, "lr": 0.1}}
    perturbations = [{"name": "rotation", "severities": [1]}]
    assert main(["-q", "run", env.yaml({"models": [model], "perturbations": perturbations})]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "train mine seed 0 failed" in line)
    assert line.endswith("training diverged in epoch 1 (loss nan); nothing was cached; lower train.lr (now 0.1) or "
                         "check the model"), line  # fmt: skip


def _small(env: Env) -> str:
    return env.yaml({"models": ["baseline_cnn_tiny"], "perturbations": [{"name": "rotation", "severities": [1]}]})


def _no_space(path: object = "") -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_for_the_report_keeps_the_old_report(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from robustbench_fmnist.report import writer

    path = _small(env)
    assert main(["-q", "run", path]) == 0
    before = _snapshot(env.root)

    def full(folder: Path) -> None:
        (folder / "report.md").write_text("half")
        raise _no_space(folder / "report.html")

    monkeypatch.setattr(writer, "render_files", full)
    capsys.readouterr()
    assert main(["-q", "run", path]) == 2  # every evaluation is stored: straight to the report
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"the report folder {env.output / 'tiny'}: no space left on its disk (" in err and "needs about" in err
    assert _snapshot(env.root) == before, "the old report and the cache are as they were"
    assert sorted(p.name for p in env.output.iterdir()) == [".tiny.rbfm-lock", "tiny"], "no staging left"


def test_a_full_disk_for_the_checkpoint_cache_is_one_line(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save = torch.save

    def full(obj: object, file: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoints" not in str(file):
            return save(obj, file, *args, **kwargs)
        try:
            raise _no_space(file)
        except OSError as exc:  # as torch.save reports it: a RuntimeError raised while handling the OSError
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from exc

    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    assert main(["-q", "run", _small(env)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"the checkpoint cache {env.root}/checkpoints/checkpoints: no space left on its disk (" in err, err
    assert "needs about" in err and "free some space or choose another folder" in err, err
    cache = Path(env.experiment["cache_dir"])
    assert not [p for p in cache.rglob("*") if p.is_file()], "no half-written checkpoint"
    assert not (env.output / "tiny").exists()


def test_report_into_a_read_only_folder_is_one_line(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from robustbench_fmnist import files

    folder = env.root / "reports" / "saved"
    folder.mkdir(parents=True)
    _write_minimal_report(folder)
    before = _snapshot(env.root)

    def read_only(*args: Any, dir: Any = None, **kwargs: Any) -> str:
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    # as root, a chmod does not stop writes: the file system's answer is injected instead
    monkeypatch.setattr(files.tempfile, "mkdtemp", read_only)
    capsys.readouterr()
    assert main(["-q", "report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"the report folder {folder} cannot be written (Read-only file system); make it writable" in err
    assert {p: c for p, c in _snapshot(env.root).items() if not p.name.endswith(".rbfm-lock")} == before
