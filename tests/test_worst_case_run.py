"""An experiment with `adversaries:` end to end: tasks in the plan, per-image records stored and resumed, the rows."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from robustbench_fmnist.config import parse_config
from robustbench_fmnist.orchestration.experiment import plan_experiment, run_experiment

ADVERSARIES = [
    {"name": "spatial", "space": {"rotation": [-30, 30, 5], "translate": [-2, 2, 3]}, "search": "grid", "images": 40},
    {"name": "spatial_w4", "space": "spatial", "search": "worst_of_k", "k": 4},
    {"name": "spatial_random", "space": "spatial", "search": "random"},
    {"name": "light_pgd", "space": {"brightness": [-0.4, 0.4, 5]}, "search": "gradient", "steps": 3, "restarts": 1},
]


@pytest.fixture
def config(tiny_experiment: dict[str, Any]) -> dict[str, Any]:
    return {
        **tiny_experiment,
        "models": [
            {"name": "baseline_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}},
            {"name": "deep_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}},
        ],
        "perturbations": [{"name": "rotation", "severities": [1]}],
        "adversaries": ADVERSARIES,
        "threads": 1,
    }


@pytest.mark.slow
def test_adversaries_run_as_tasks_store_records_and_give_ordered_rows(config: dict[str, Any], capsys) -> None:
    planned = plan_experiment(parse_config(config))
    attacks = [t for t in planned.missing if type(t).__name__ == "AdversaryTask"]
    assert [t.adversary for t in attacks] == [a["name"] for a in ADVERSARIES] * 2
    described = planned.describe()
    assert "attack baseline_cnn_tiny seed 0 spatial (at most" in described
    assert ", 8 adversary searches, 2 transfers), " in described and "under a minute here" in described
    assert "transfer spatial seed 0: deep_cnn_tiny at baseline_cnn_tiny's worst points" in described
    folder = run_experiment(parse_config(config))
    rows = pd.read_csv(folder / "adversaries.csv")
    consistency = pd.read_csv(folder / "consistency.csv")
    assert {"clean", "rotation s1", "worst case: spatial"} <= set(consistency["condition"])
    assert (consistency["kappa"].between(-1, 1) | consistency["kappa"].isna()).all() and consistency[
        "n_images"
    ].nunique() == 1
    rows = rows[rows.model == "baseline_cnn_tiny"]
    whole = rows[rows.budget == 1.0].set_index("adversary")
    clean = whole["accuracy_clean"].iloc[0]
    assert whole.loc["spatial", "accuracy"] <= whole.loc["spatial_w4", "accuracy"]
    assert whole.loc["spatial_w4", "accuracy"] <= whole.loc["spatial_random", "accuracy"] <= clean
    assert whole.loc["light_pgd", "accuracy"] <= clean
    curve = rows[rows.adversary == "spatial"].sort_values("budget")
    assert len(curve) == 6 and curve["accuracy"].is_monotonic_decreasing and curve["budget"].iloc[0] == 0.0
    assert curve["accuracy"].iloc[0] == pytest.approx(clean)  # no budget: the clean image alone
    assert whole.loc["spatial", "sample_images"] == 40 and 0 <= whole.loc["spatial", "orbit_consistency"] <= 1
    transfer = pd.read_csv(folder / "transfer.csv")
    assert sorted(zip(transfer["source"], transfer["model"], strict=True)) == [
        ("baseline_cnn_tiny", "deep_cnn_tiny"), ("deep_cnn_tiny", "baseline_cnn_tiny")
    ]  # fmt: skip
    assert (transfer["accuracy"] <= transfer["accuracy_clean"]).all()
    report = (folder / "report.md").read_text()
    assert "## Do the worst points transfer?" in report
    assert "## The worst case per image" in report and "figures/worst_case.png" in report
    assert "## Do models fail on the same images?" in report and "figures/consistency_spatial.png" in report
    assert "figures/fooling_spatial_baseline_cnn_tiny.png" in report
    assert "figures/fooling_by_class_spatial_baseline_cnn_tiny.png" in report
    by_class = pd.read_csv(folder / "fooling_by_class.csv")
    assert len(by_class) == 2 * 10 * 5 * 3  # models x classes x rotation x translate_x
    fooling = pd.read_csv(folder / "fooling.csv")
    assert len(fooling) == 2 * 5 * 3 * 3 and fooling["fooling_rate"].dropna().between(0, 1).all()
    assert (folder / "figures" / "worst_case.png").stat().st_size > 0
    run = json.loads((folder / "run.json").read_text())
    assert sum("spatial" in name for name in run["tasks"]["records"]) == 8  # 6 searches, 2 transfers
    # stored: a second run searches nothing and gives the same rows
    again = run_experiment(parse_config(config))
    rerun = json.loads((again / "run.json").read_text())
    assert rerun["tasks"]["ran"] == 0
    # verify reads the adversary records (their checksums) beside re-evaluating the evaluations
    from robustbench_fmnist.cli import main

    assert main(["-q", "verify", str(again), "--sample", "20"]) == 0
    assert "10 adversary records checked for integrity" in capsys.readouterr().out
    # the report re-renders from its own files alone, the worst-case sections included
    before = (again / "report.md").read_text()
    assert main(["-q", "report", str(again)]) == 0
    assert (again / "report.md").read_text() == before
    again_rows = pd.read_csv(again / "adversaries.csv")
    pd.testing.assert_frame_equal(
        again_rows[again_rows.model == "baseline_cnn_tiny"].drop(columns="seconds"), rows.drop(columns="seconds")
    )


@pytest.mark.slow
def test_an_edited_adversary_record_is_searched_again(config: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A record whose observations were edited fails its checksum: searched again, the same rows as before."""
    import logging
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file

    config = {**config, "models": config["models"][:1], "adversaries": ADVERSARIES[:1]}
    first = pd.read_csv(run_experiment(parse_config(config)) / "adversaries.csv").drop(columns="seconds")
    (path,) = (Path(config["cache_dir"]) / "evaluations").glob("*-spatial-*.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    tensors["clean_prediction"] = (tensors["clean_prediction"] + 1) % 10  # every clean class changed
    save_file(tensors, str(path), metadata=metadata)
    with caplog.at_level(logging.WARNING):
        folder = run_experiment(parse_config(config))
    lines = [r.getMessage() for r in caplog.records if path.name in r.getMessage()]
    assert len(lines) == 1 and "does not match the SHA-256" in lines[0] and "searching again" in lines[0]
    assert json.loads((folder / "run.json").read_text())["tasks"]["ran"] == 1
    pd.testing.assert_frame_equal(pd.read_csv(folder / "adversaries.csv").drop(columns="seconds"), first)


def test_bench_measures_each_adversarys_search_step_against_the_bare_forward(config: dict[str, Any]) -> None:
    from robustbench_fmnist.orchestration.bench import run_bench

    quick = {"devices": ["cpu"], "batch_sizes": [32], "dtypes": ["float32"], "latency": False,
             "training_batch_size": None, "perturbations": False, "sweep": False, "repeats": 1}  # fmt: skip
    config = {**config, "models": config["models"][:1], "adversaries": ADVERSARIES[:2], "throughput": quick}
    folder, table = run_bench(parse_config(config))
    steps = table[table["kind"].isin(["adversary step", "adversary forward"])]
    assert sorted(set(steps["model"])) == ["baseline_cnn_tiny spatial", "baseline_cnn_tiny spatial_w4"]
    assert (steps["images_per_second"] > 0).all() and len(steps) == 4
    assert (folder / "throughput.csv").is_file()
    from robustbench_fmnist.report.markdown import _throughput  # the throughput section a report shows

    assert "A worst-case search's step" in "\n".join(_throughput(table))


@pytest.mark.slow
def test_a_model_with_tta_is_also_searched_through_its_k_copies(tiny_experiment: dict[str, Any]) -> None:
    """An adversary task per adaptation in {none, tta}: the tta search costs k times the passes, files its rows under
    model+tta, and its clean accuracy is the tta evaluation's clean accuracy (one model behind both)."""
    config = {
        **tiny_experiment,
        "models": [
            {"name": "baseline_cnn_tiny", "adaptation": ["none", "tta"], "train": {"epochs": 4, "batch_size": 16}}
        ],
        "perturbations": [{"name": "rotation", "severities": [1]}],
        "adversaries": ADVERSARIES[:3],
        # quarter turns: copies far enough from the image that the averaged logits change its accuracy
        "evaluation": {"batch_size": 64, "tta": {"space": {"rotation": [-90, 90, 3]}}},
        "threads": 1,
    }
    attacks = [t for t in plan_experiment(parse_config(config)).missing if type(t).__name__ == "AdversaryTask"]
    by_label = {(t.label, t.adversary): t for t in attacks}
    assert len(attacks) == 6 and ("baseline_cnn_tiny+tta", "spatial") in by_label
    plain, augmented = by_label[("baseline_cnn_tiny", "spatial")], by_label[("baseline_cnn_tiny+tta", "spatial")]
    assert augmented.forward_passes == 3 * plain.forward_passes and augmented.key != plain.key
    folder = run_experiment(parse_config(config))
    rows = pd.read_csv(folder / "adversaries.csv")
    whole = rows[rows.budget == 1.0].set_index(["model", "adversary"])
    tta = whole.loc["baseline_cnn_tiny+tta"]
    per_image = tta["forward_passes"] / whole.loc["baseline_cnn_tiny"]["forward_passes"]
    assert per_image.loc["spatial_random"] == pytest.approx(3, rel=0.5), "k = 3 passes for each of the search's"
    assert tta.loc["spatial", "accuracy"] <= tta.loc["spatial_w4", "accuracy"] <= tta.loc["spatial_random", "accuracy"]
    results = pd.read_csv(folder / "results.csv")
    clean = results[results.perturbation == "clean"].set_index("model")
    assert clean.loc["baseline_cnn_tiny+tta", "accuracy"] != clean.loc["baseline_cnn_tiny", "accuracy"]
    for label in ("baseline_cnn_tiny", "baseline_cnn_tiny+tta"):  # a near tie may fall either way between batchings
        searched = whole.loc[(label, "spatial"), "accuracy_clean"]
        assert searched == pytest.approx(clean.loc[label, "accuracy"], abs=1.5 / clean.loc[label, "n_images"])


@pytest.mark.slow
def test_an_adversary_with_test_images_searches_only_the_first_n(tiny_experiment: dict[str, Any]) -> None:
    """`test_images: N` on the grid: its rows, transfers and intervals count N images; the weaker searches over the same
    space keep the whole test set, and their witnesses still bound the grid image by image on the shared N."""
    few = 30
    adversaries = [{**ADVERSARIES[0], "images": 10, "test_images": few}, *ADVERSARIES[1:3]]
    config = {
        **tiny_experiment,
        "models": [{"name": "baseline_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}}, "deep_cnn_tiny"],
        "perturbations": [{"name": "rotation", "severities": [1]}],
        "adversaries": adversaries,
        "threads": 1,
    }
    planned = plan_experiment(parse_config(config))
    attacks = {(t.label, t.adversary): t for t in planned.missing if type(t).__name__ == "AdversaryTask"}
    grid, drawn = attacks[("baseline_cnn_tiny", "spatial")], attacks[("baseline_cnn_tiny", "spatial_random")]
    assert grid.identity["test_images"] == few and drawn.identity["test_images"] == planned.test_images > few
    assert grid.forward_passes == few * (1 + 5 * 3 * 3)
    folder = run_experiment(parse_config(config))
    whole = pd.read_csv(folder / "adversaries.csv").query("budget == 1.0").set_index(["model", "adversary"])
    assert (whole.xs("spatial", level="adversary")["n_images"] == few).all()
    assert (whole.xs("spatial_random", level="adversary")["n_images"] == planned.test_images).all()
    transfer = pd.read_csv(folder / "transfer.csv")
    assert len(transfer) == 2 and (transfer["n_images"] == few).all()
    consistency = pd.read_csv(folder / "consistency.csv").set_index("condition")
    assert consistency.loc["worst case: spatial", "n_images"] == few
    assert f"`spatial` the first {few}" in (folder / "report.md").read_text()


def test_a_grid_on_fewer_images_counts_the_weaker_searches_witnesses_on_the_shared_ones() -> None:
    """verdicts: a grid over the first 3 images and a worst-of-k over all 5 give grid <= worst-of-k on the 3."""
    import torch

    from robustbench_fmnist.evaluation.adversary import NONE, AdversaryOutputs
    from robustbench_fmnist.orchestration.plan import AdversaryTask
    from robustbench_fmnist.orchestration.tasks import Attack
    from robustbench_fmnist.orchestration.worst_case import verdicts

    space = {"rotation": [-30, 30, 3]}

    def attack(search: str, n: int, fooling: list[int], k: int | None = None) -> tuple[AdversaryTask, Attack]:
        spec = {"space": space, "search": search, "k": k, "images": 2, "steps": 1, "restarts": 1}
        task = AdversaryTask("m", search, 0, "w", search, 1, None, {"adversary": spec, "test_images": n})
        outputs = AdversaryOutputs(
            clean_prediction=torch.zeros(n, dtype=torch.uint8),
            random_point=torch.zeros(n, dtype=torch.int32),
            random_prediction=torch.zeros(n, dtype=torch.uint8),
            fooling_point=torch.tensor(fooling, dtype=torch.int32),
            fooling_prediction=torch.zeros(n, dtype=torch.uint8),
            worst_point=torch.full((n,), NONE, dtype=torch.int32),
            worst_true_probability=torch.ones(n),
            sample_indices=torch.zeros(0, dtype=torch.int64),
            sample_predictions=torch.zeros((0, 3), dtype=torch.uint8),
            found_values=torch.zeros((n, 0)),
            forward_passes=n,
        )
        return task, Attack(outputs, 0.0, "sha")

    grid = attack("grid", 3, [NONE, NONE, 0])
    drawn = attack("worst_of_k", 5, [2, NONE, NONE, 0, NONE], k=2)
    result = verdicts(dict([grid, drawn]), torch.zeros(5, dtype=torch.long))
    assert result[grid[0]].correct.tolist() == [False, True, False]  # image 0: the worst-of-k's witness counts
    assert result[drawn[0]].correct.tolist() == [False, True, True, False, True]
