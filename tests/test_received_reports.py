"""A report folder from someone else is data: no command runs the code its run.json names, bar reproduce --trust-code.

Each test plants a copy of a committed report whose run.json names a factory module that is
importable (it lies in the folder, which is the working folder and on sys.path) and whose import
writes a marker file; the command must leave the marker unwritten.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustbench_fmnist.cli import main
from robustbench_fmnist.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
LIGHTING = ROOT / "reports" / "lighting"  # five seeds: what reproduce needs
REPORTS, EXPERIMENTS = ROOT / "reports", ROOT / "experiments"
MODULE = "received_evil_factory"  # unique, so no real module is shadowed and no other test imports it
RENDERED = ("figures", "report.md", "report.html")  # not read back: left out so the copy stays small


def _factory_source(marker: Path) -> str:
    # the module's top level runs on import: the marker says that it did
    return (
        "from pathlib import Path\n"
        "from torch import nn\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "def build(**kwargs):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )


@pytest.fixture
def received(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A received report folder (the working folder) whose run.json names MODULE:build, and its marker path."""
    folder = tmp_path / "received"
    shutil.copytree(LIGHTING, folder, ignore=shutil.ignore_patterns(*RENDERED))
    run = json.loads((folder / "run.json").read_text())
    run["config"]["models"][0].update(factory=f"{MODULE}:build")
    (folder / "run.json").write_text(json.dumps(run, indent=2))
    marker = tmp_path / "marker"
    (folder / f"{MODULE}.py").write_text(_factory_source(marker))
    monkeypatch.syspath_prepend(str(folder))  # as `python -m` puts the working folder first
    monkeypatch.chdir(folder)
    importlib.invalidate_caches()
    assert importlib.util.find_spec(MODULE) is not None  # it could be imported: not importing it is a choice
    yield folder, marker
    sys.modules.pop(MODULE, None)


@pytest.fixture
def stopped_after_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stops past every check (which builds the models) and before the data is read: tests stay fast."""
    from robustbench_fmnist.orchestration import experiment

    def stop(folder: Path) -> None:
        raise HarnessError("stopped by the test after the checks")

    monkeypatch.setattr(experiment, "hold_folder", stop)


@pytest.mark.usefixtures("stopped_after_checks")  # were it not refused, the test would not train for minutes
def test_reproduce_refuses_a_reports_factory_with_one_line(
    received: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, marker = received
    code = main(["-q", "reproduce", ".", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code != 0 and not marker.exists() and MODULE not in sys.modules
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"'{MODULE}'" in lines[0] and "build" in lines[0] and "--trust-code" in lines[0]
    assert "models[0].factory" in lines[0]
    assert not (tmp_path / "out").exists()  # stopped before any work


@pytest.mark.usefixtures("stopped_after_checks")
def test_reproduce_with_trust_code_imports_it_and_says_so(
    received: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, marker = received
    argv = ["-q", "reproduce", ".", "--trust-code", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--cache-dir", str(tmp_path / "c")]) == 1
    captured = capsys.readouterr()
    assert "stopped by the test" in captured.err
    assert marker.read_text() == "imported"
    assert f"--trust-code: models[0].factory imports module '{MODULE}' and calls build" in captured.out


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_report_rerenders_without_importing(received: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, marker = received
    monkeypatch.chdir(folder.parent)  # report replaces the folder, so not from inside it; MODULE stays importable
    assert main(["-q", "report", folder.name]) == 0
    assert (folder / "report.md").is_file()
    assert not marker.exists() and MODULE not in sys.modules


def test_compare_reads_without_importing(received: tuple[Path, Path], tmp_path: Path) -> None:
    _, marker = received
    argv = ["-q", "compare", ".", str(LIGHTING), "--noise-from", ".", "--output-dir", str(tmp_path / "cmp")]
    assert main(argv) == 0
    assert (tmp_path / "cmp" / "compare.md").is_file()
    assert not marker.exists() and MODULE not in sys.modules


def test_leaderboard_reads_without_importing(received: tuple[Path, Path], tmp_path: Path) -> None:
    _, marker = received
    argv = ["-q", "leaderboard", ".", "--output-dir", str(tmp_path / "board"), "--bootstrap", "100"]
    assert main(argv) == 0
    assert (tmp_path / "board" / "leaderboard.md").is_file()
    assert not marker.exists() and MODULE not in sys.modules


def test_a_reports_ray_address_is_this_machines_not_the_senders() -> None:
    from robustbench_fmnist.config import config_from_record

    raw = json.loads((LIGHTING / "run.json").read_text())["config"]
    raw["executor"] = {"kind": "ray", "address": "ray://sender.example:10001"}
    # the sender's cluster would hand back pickled results: reproduce joins this machine's
    assert config_from_record(raw, {}, "run.json").executor.address is None


def test_a_recorded_random_point_training_reads_back_as_it_was_given() -> None:
    from robustbench_fmnist.config import config_from_record, parse_config

    space = {"rotation": [-30, 30, 31]}
    models = ["baseline_cnn", {"name": "rp", "architecture": "baseline_cnn",
                               "train": {"robust_augment": {"method": "random_point", "space": space}}}]  # fmt: skip
    raw = json.loads((LIGHTING / "run.json").read_text())["config"]
    recorded = parse_config({**raw, "models": models}).model_dump(mode="json")
    # the record names random_point's unused k (its default), which a given config may not
    assert recorded["models"][1]["train"]["robust_augment"]["k"] == 10
    model = config_from_record(recorded, {}, "run.json").models[1]
    assert model.train.robust_augment.method == "random_point"
    assert "k" not in model.train.robust_augment.model_fields_set


def test_named_code_finds_factories_and_timm_files_and_nothing_in_a_plain_report() -> None:
    from robustbench_fmnist.config import config_from_record
    from robustbench_fmnist.orchestration.received import named_code

    raw = json.loads((LIGHTING / "run.json").read_text())["config"]
    assert named_code(config_from_record(raw, {}, "run.json")) == []  # registered names only: reproduce as before
    raw["models"] = [
        {"name": "mine", "factory": "pkg.models:build"},
        {"name": "timm:resnet18", "kwargs": {"checkpoint_path": "weights.pth"}},
    ]
    found = [str(code) for code in named_code(config_from_record(raw, {}, "run.json"))]
    assert found == [
        "models[0].factory imports module 'pkg.models' and calls build",
        "models[1].kwargs.checkpoint_path has timm load weights.pth (torch.load)",
    ]


class _WritesOnUnpickle:
    """Unpickling this calls Path.write_text: what a pickled array in a received .npz could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.write_text, (self.marker, "unpickled")


def test_a_pickled_array_in_a_report_is_refused_not_loaded(
    received: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    folder, _ = received
    marker = tmp_path / "unpickled"
    with np.load(folder / "examples.npz") as saved:
        arrays = dict(saved)
    arrays["row_names"] = np.array([_WritesOnUnpickle(marker)] * len(arrays["row_names"]), dtype=object)
    np.savez_compressed(folder / "examples.npz", **arrays)
    assert main(["-q", "compare", ".", ".", "--output-dir", str(tmp_path / "cmp")]) != 0
    assert "examples.npz: unreadable" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_report_html_shows_a_reports_html_as_text_and_reads_no_file_outside_it(
    received: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = received
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"this machine's own file")
    run = json.loads((folder / "run.json").read_text())
    run["config"]["description"] = f"<script>alert('ran')</script> ![leak]({secret}) ![up](../secret.png)"
    (folder / "run.json").write_text(json.dumps(run))
    monkeypatch.chdir(folder.parent)
    assert main(["-q", "report", folder.name]) == 0
    page = (folder / "report.html").read_text()
    # the one script on the page is the harness's own table sorting, after the report's text
    assert "&lt;script&gt;alert" in page and "<script>alert" not in page and page.count("<script>") == 1
    assert page.index("<script>") > page.index("&lt;script&gt;alert")
    assert base64.b64encode(secret.read_bytes()).decode() not in page and "data:image/png" in page  # figures stay


@pytest.mark.parametrize("name", ["remedies", "worst_case", "viewpoint_remedies", "viewpoint_longer_training"])
def test_a_recorded_model_with_train_overrides_reproduces_with_the_recipe_it_trained_by(name: str) -> None:
    from robustbench_fmnist.config import config_from_record, load_config
    from robustbench_fmnist.training.resolution import resolve

    run = json.loads((REPORTS / name / "run.json").read_text())
    recipes = {m["name"]: m["recipe"] for m in run["models"] if m.get("recipe")}
    given = {m.name: m.recipe for m in resolve(load_config(EXPERIMENTS / f"{name}.yaml"))}
    again = {m.name: m.recipe for m in resolve(config_from_record(run["config"], {}, "run.json", recipes))}
    assert again == given
    # the config alone lists every override at its default: epochs, augmentation and precision would change
    unrecorded = {m.name: m.recipe for m in resolve(config_from_record(run["config"], {}, "run.json"))}
    assert unrecorded != given
