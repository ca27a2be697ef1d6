"""Experiments as plans of tasks: the plan, stored results, resuming, failures and retries, on the local executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import parse_config
from robustbench_fmnist.orchestration.experiment import plan_experiment, run_experiment
from robustbench_fmnist.orchestration.plan import EvaluateTask, TrainTask, cell_groups
from robustbench_fmnist.orchestration.task_store import TaskStore
from robustbench_fmnist.report.bundle import read_data
from tests.conftest import requires_real_data

FAULTS = Path(__file__).parent / "fault_models.py"
# what two runs of the same plan may differ in: how long each cell took
TIMING = ["seconds"]


def _results(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results.csv").drop(columns=TIMING)


def _grid(tiny_experiment: dict[str, Any], tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """Two tiny models, two seeds, a few cells: the grid the executor tests run."""
    config = {
        **tiny_experiment,
        "seeds": [0, 1],
        "models": [{"name": "baseline_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}}, "deep_cnn_tiny"],
        "perturbations": [{"name": "brightness_down", "severities": [1, 5]}, {"name": "rotation", "severities": [3]}],
        "threads": 1,
    }
    config.update(changes)
    return config


def test_the_plan_lists_each_training_then_its_evaluations_keyed_by_identity(
    tiny_experiment: dict[str, Any], tmp_path: Path
) -> None:
    config = parse_config(_grid(tiny_experiment, tmp_path))
    planned = plan_experiment(config)
    plan = planned.plan
    assert len(plan.train) == 4  # 2 models x 2 seeds
    assert len(plan.evaluate) == 4 * 3  # clean, brightness_down (2 severities), rotation
    assert isinstance(plan.tasks[0], TrainTask) and all(isinstance(t, EvaluateTask) for t in plan.tasks[1:4])
    assert {t.train for t in plan.tasks[1:4]} == {plan.tasks[0]}
    assert len({t.key for t in plan.evaluate}) == len(plan.evaluate), "every evaluation has its own key"
    assert not planned.done and len(planned.missing) == 16
    # the same experiment planned again gives the same keys; another seed or cell gives other ones
    again = plan_experiment(parse_config(_grid(tiny_experiment, tmp_path))).plan
    assert [t.key for t in again.tasks] == [t.key for t in plan.tasks]
    other = plan_experiment(parse_config(_grid(tiny_experiment, tmp_path, seeds=[0, 2]))).plan
    assert {t.key for t in other.evaluate if t.seed == 0} == {t.key for t in plan.evaluate if t.seed == 0}
    assert not {t.key for t in other.evaluate if t.seed == 2} & {t.key for t in plan.evaluate}
    groups = cell_groups(planned.checked.cells)
    assert [len(g) for g in groups] == [1, 2, 1] and groups[0][0].is_clean


def test_a_second_run_does_no_task_and_writes_the_same_report(
    tiny_experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = parse_config(_grid(tiny_experiment, tmp_path))
    folder = run_experiment(config)
    first = _results(folder)
    run = pd.read_json(folder / "run.json", typ="series")
    assert run["tasks"]["ran"] == 16 and run["tasks"]["stored_before"] == 0 and not run["tasks"]["failed"]
    assert main(["plan", str(_yaml(tmp_path, _grid(tiny_experiment, tmp_path)))]) == 0
    printed = capsys.readouterr().out
    assert "16 tasks (4 trainings, 12 evaluations), 16 done, 0 to do" in printed
    assert printed.count("  done   ") == 16
    folder = run_experiment(config)
    run = pd.read_json(folder / "run.json", typ="series")
    assert run["tasks"]["ran"] == 0 and run["tasks"]["stored_before"] == 16
    pd.testing.assert_frame_equal(_results(folder), first)
    assert {m["weights"] for m in run["models"]} == {"cached"}


def _yaml(tmp_path: Path, config: dict[str, Any], name: str = "grid.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_a_run_killed_midway_resumes_with_only_the_missing_tasks(
    tiny_experiment: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL the CLI once some evaluations are stored; the rerun does only the rest, and the report is the same."""
    grid = _grid(tiny_experiment, tmp_path)
    path = _yaml(tmp_path, grid)
    evaluations = Path(grid["cache_dir"]) / "evaluations"
    command = [sys.executable, "-m", "robustbench_fmnist", "-q", "run", str(path)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent
    )
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if evaluations.is_dir() and len(list(evaluations.glob("*.safetensors"))) >= 4:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stored = len(list(evaluations.glob("*.safetensors")))
    assert not list(Path(grid["cache_dir"]).rglob("*.tmp")), "no half-written result"
    assert not (Path(grid["output_dir"]) / "tiny" / "results.csv").exists(), "no report from a killed run"
    planned = plan_experiment(parse_config(grid))
    missing = planned.missing
    assert 0 < len(missing) < 16 and sum(isinstance(t, EvaluateTask) for t in missing) == 12 - stored
    folder = run_experiment(parse_config(grid))
    run = pd.read_json(folder / "run.json", typ="series")
    assert run["tasks"]["ran"] == len(missing) and run["tasks"]["stored_before"] == 16 - len(missing)
    # the same report as one uninterrupted run from an empty cache
    fresh = run_experiment(
        parse_config({**grid, "cache_dir": str(tmp_path / "fresh"), "output_dir": str(tmp_path / "fresh-reports")})
    )
    pd.testing.assert_frame_equal(_results(folder), _results(fresh))


def test_a_failing_task_is_retried_then_reported_while_the_others_land(
    tiny_experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts = tmp_path / "attempts.log"
    grid = _grid(
        tiny_experiment,
        tmp_path,
        seeds=[0],
        models=[{"name": "dark_fails", "factory": "fault_models:fails_on_dark_images",
                 "kwargs": {"attempts": str(attempts)}, "train": {"epochs": 1, "batch_size": 64}}],
        executor={"kind": "local", "retries": 2},
    )  # fmt: skip
    code = main(["-q", "run", str(_yaml(tmp_path, grid))])
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(attempts.read_text().splitlines()) == 3, "the failing task ran 1 + 2 retries times"
    line = next(line for line in err.splitlines() if "failed after" in line)
    assert "evaluate dark_fails seed 0 brightness_down s1-s5 failed after 3 attempts: RuntimeError: a dark" in line
    results = read_data(Path(grid["output_dir"]) / "tiny").results
    failed = results[results["failed"] != ""]
    assert set(failed["perturbation"]) == {"brightness_down"} and len(failed) == 2
    assert failed["accuracy"].isna().all()
    landed = results[results["failed"] == ""]
    assert set(landed["perturbation"]) == {"clean", "rotation"} and landed["accuracy"].notna().all()
    report = (Path(grid["output_dir"]) / "tiny" / "report.md").read_text()
    assert "Warning: 2 failed cells." in report
    # a second run retries only the failed task: clean and rotation are stored
    planned = plan_experiment(parse_config(grid))
    assert [t.title for t in planned.missing] == ["evaluate dark_fails seed 0 brightness_down s1-s5"]


def test_a_training_that_fails_fails_its_evaluations_and_keeps_the_other_models(
    tiny_experiment: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustbench_fmnist.orchestration.tasks as tasks

    real = tasks.train_weights

    def flaky(resolved, *args, **kwargs):
        if resolved.name == "deep_cnn_tiny":
            raise MemoryError("out of memory")
        return real(resolved, *args, **kwargs)

    monkeypatch.setattr(tasks, "train_weights", flaky)
    grid = _grid(tiny_experiment, tmp_path, seeds=[0], executor={"kind": "local", "retries": 0})
    folder = run_experiment(parse_config(grid))
    results = read_data(folder).results
    deep = results[results["model"] == "deep_cnn_tiny"]
    assert (deep["failed"].str.startswith("its training failed (MemoryError: out of memory)")).all()
    assert results.loc[results["model"] == "baseline_cnn_tiny", "accuracy"].notna().all()
    run = pd.read_json(folder / "run.json", typ="series")
    assert [m["weights"] for m in run["models"]] == ["trained", "failed"]
    assert run["tasks"]["failed"][0] == "train deep_cnn_tiny seed 0 failed after 1 attempt: MemoryError: out of memory"


def test_ctrl_c_keeps_finished_tasks_and_writes_no_report(
    tiny_experiment: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = []
    real = TaskStore.save_evaluation

    def interrupt_after_two(self, task, evaluation):
        real(self, task, evaluation)
        saved.append(task)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(TaskStore, "save_evaluation", interrupt_after_two)
    grid = _grid(tiny_experiment, tmp_path, seeds=[0])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(parse_config(grid))
    assert not (Path(grid["output_dir"]) / "tiny").exists()
    planned = plan_experiment(parse_config(grid))
    assert set(saved) <= planned.done and len(planned.done) == 3  # the training and two evaluations


def test_a_corrupt_stored_evaluation_is_done_again(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    grid = _grid(tiny_experiment, tmp_path, seeds=[0], models=["baseline_cnn_tiny"])
    first = _results(run_experiment(parse_config(grid)))
    stored = sorted((Path(grid["cache_dir"]) / "evaluations").glob("*.safetensors"))
    stored[0].write_bytes(b"not a safetensors file")
    folder = run_experiment(parse_config(grid))
    run = pd.read_json(folder / "run.json", typ="series")
    assert run["tasks"]["ran"] == 1 and run["tasks"]["stored_before"] == 3  # the unreadable one is done again
    pd.testing.assert_frame_equal(_results(folder), first)


def test_the_compiled_sweep_predicts_what_the_plain_model_predicts(synthetic_dir: Path) -> None:
    """The one inference path compiled (folded, fused, channels_last) gives the plain fp32 model's classes."""
    from robustbench_fmnist.evaluation.cells import sweep_cells
    from robustbench_fmnist.evaluation.sweep import evaluate_cells
    from robustbench_fmnist.models import create_model

    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    images = torch.rand(512, 1, 28, 28)
    labels = torch.randint(0, 10, (512,))
    cells = sweep_cells([("brightness_up", [3]), ("rotation", [2])])
    _, compiled = evaluate_cells(
        model, "m", images, labels, cells, device=torch.device("cpu"), batch_size=128, compile="always"
    )
    with torch.inference_mode():
        for cell, outputs in compiled.items():
            from robustbench_fmnist.evaluation.cells import perturb_cell

            batch = images if cell.is_clean else perturb_cell(cell, images, seed=0, indices=torch.arange(512))
            plain = model(batch).argmax(1).to(torch.uint8)
            assert torch.equal(outputs.predictions, plain), cell


@requires_real_data
@pytest.mark.slow
def test_on_the_test_set_the_prepared_model_predicts_what_the_plain_model_predicts() -> None:
    """A briefly trained baseline, every one of the 10,000 test images clean and under two shifts."""
    from robustbench_fmnist.data import load_fashion_mnist, to_float_images
    from robustbench_fmnist.evaluation.cells import perturb_cell, sweep_cells
    from robustbench_fmnist.evaluation.sweep import evaluate_cells
    from robustbench_fmnist.models import create_model
    from robustbench_fmnist.models.baseline import BASELINE_RECIPE
    from robustbench_fmnist.training.loop import train_model

    data = load_fashion_mnist()
    torch.manual_seed(0)
    model = create_model("baseline_cnn")
    train_model(
        model,
        data.train,
        BASELINE_RECIPE.model_copy(update={"epochs": 1, "train_images": 10_000}),
        seed=0,
        device=torch.device("cpu"),
    )
    model.eval()
    images, labels = to_float_images(data.test.images, "cpu"), data.test.labels
    cells = sweep_cells([("contrast_down", [5]), ("rotation", [3])])
    _, outputs = evaluate_cells(
        model, "baseline_cnn", images, labels, cells, device=torch.device("cpu"), compile="auto"
    )
    with torch.inference_mode():
        for cell, out in outputs.items():
            batch = images if cell.is_clean else perturb_cell(cell, images, seed=0, indices=torch.arange(len(images)))
            plain = torch.cat([model(part).argmax(1) for part in batch.split(1000)]).to(torch.uint8)
            assert torch.equal(out.predictions, plain), cell


def test_dry_run_prints_the_plan_and_writes_nothing(
    tiny_experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = _grid(tiny_experiment, tmp_path, seeds=[0])
    assert main(["run", str(_yaml(tmp_path, grid)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("8 tasks (2 trainings, 6 evaluations), 0 done, 8 to do; executor local")
    assert "  to do  train baseline_cnn_tiny seed 0" in out
    assert "  to do  evaluate deep_cnn_tiny seed 0 brightness_down s1-s5" in out
    assert not Path(grid["output_dir"]).exists() and not Path(grid["cache_dir"]).exists()


def test_ls_lists_the_executors_and_backends(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "executors"]) == 0
    out = capsys.readouterr().out
    assert "executors (executor.kind):" in out and "  local " in out and "  ray " in out
    assert main(["ls", "backends"]) == 0
    assert "  albumentations " in capsys.readouterr().out
