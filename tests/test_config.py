"""Bad configs fail with one clear line naming the key; good ones resolve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import load_config, parse_config
from robustbench_fmnist.errors import ConfigError, HarnessError
from robustbench_fmnist.evaluation.cells import experiment_cells
from robustbench_fmnist.orchestration.preflight import resolve_experiment
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.training.resolution import resolve

EXPERIMENT_DIR = Path(__file__).resolve().parent.parent / "experiments"
EXPERIMENTS = sorted(EXPERIMENT_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_validate(path: Path) -> None:
    config = load_config(path)
    assert all(resolve_experiment(config))
    assert config.name == path.stem


def test_lighting_experiment_runs_the_lighting_family_on_both_models() -> None:
    config = load_config(EXPERIMENT_DIR / "lighting.yaml")
    assert [m.name for m in config.models] == ["baseline_cnn", "deep_cnn"]
    assert {p.name for p in config.perturbations} == set(PERTURBATIONS.names()) & {
        n for n in PERTURBATIONS.names() if PERTURBATIONS.get(n).family == "lighting"
    }
    assert all(p.severities is None for p in config.perturbations)  # every level of each table
    assert config.evaluation.precision == "float32"


def test_viewpoint_and_full_experiments_cover_the_rest_of_the_suite() -> None:
    viewpoint = load_config(EXPERIMENT_DIR / "viewpoint.yaml")
    families = {PERTURBATIONS.get(p.name).family for p in viewpoint.perturbations}
    assert families == {"viewpoint"}
    assert {p.name for p in viewpoint.perturbations} == set(PERTURBATIONS.names("*")) & {
        n for n in PERTURBATIONS.names() if PERTURBATIONS.get(n).family == "viewpoint"
    }
    rotation = next(p for p in viewpoint.perturbations if p.name == "rotation")
    assert rotation.values_key == "angles" and rotation.values[:3] == (5, 10, 15)
    full = load_config(EXPERIMENT_DIR / "full.yaml")
    assert sorted(p.name for p in full.perturbations) == PERTURBATIONS.names()


def test_the_quickstart_is_the_lighting_experiment_with_one_seed_against_the_reference() -> None:
    quickstart, lighting = (
        load_config(EXPERIMENT_DIR / "quickstart.yaml"),
        load_config(EXPERIMENT_DIR / "lighting.yaml"),
    )
    differ = {"name", "description", "seed", "seeds", "noise_from"}
    assert quickstart.model_dump(exclude=differ) == lighting.model_dump(exclude=differ)
    assert quickstart.run_seeds == (0,) and len(lighting.run_seeds) >= 5
    assert quickstart.noise_from is not None and quickstart.noise_from.resolve() == REPORTS / "lighting"


REPORTS = EXPERIMENT_DIR.parent / "reports"


@pytest.mark.parametrize("name", ["lighting", "viewpoint"])
def test_committed_references_are_their_experiment_with_five_seeds_in_the_locked_environment(name: str) -> None:
    from robustbench_fmnist.report.bundle import read_data

    reference = read_data(REPORTS / name)
    experiment = load_config(EXPERIMENT_DIR / f"{name}.yaml")
    # read by today's schema: keys added since (with their defaults) do not make it another experiment
    recorded = parse_config(reference.run["config"]).model_dump(mode="json")
    assert recorded["models"] == experiment.model_dump(mode="json")["models"]
    assert recorded["perturbations"] == experiment.model_dump(mode="json")["perturbations"]
    assert sorted(reference.results["seed"].unique()) == sorted(experiment.run_seeds) and len(experiment.run_seeds) >= 5
    env = reference.run["environment"]
    assert env["lock"]["matches"] is True and "+dirty" not in env["git_commit"]
    assert all(m["weights"] == "trained" or name == "viewpoint" for m in reference.run["models"]), "a clean cache"
    assert all(len(m["weights_sha256"]) == 64 and m["trained_with"] for m in reference.run["models"])
    if name == "lighting":
        assert reference.throughput is not None and (reference.throughput["kind"] == "inference").any()


def test_custom_values_under_the_perturbations_own_key(write_yaml: Callable[..., Path], tiny_experiment: dict) -> None:
    tiny_experiment["perturbations"] = [{"name": "rotation", "angles": [0, 10, 20]}]
    config = load_config(write_yaml(tiny_experiment))
    cells = experiment_cells(config)
    assert [(c.perturbation, c.severity, c.parameter) for c in cells[1:]] == [
        ("rotation", 1, 0.0), ("rotation", 2, 10.0), ("rotation", 3, 20.0)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("perturbation", "message"),
    [
        (
            {"name": "rotation", "angels": [10]},
            r"perturbations\[0\]\.angels: unknown key for rotation; did you mean 'angles'",
        ),
        ({"name": "rotation", "angles": [400]}, r"perturbations\[0\]\.angles: rotation: parameter 400 is outside"),
        (
            {"name": "hflip", "severities": [1, 3]},
            r"perturbations\[0\]\.severities: hflip: severity must be an integer 0\.\.1",
        ),
        ({"name": "hflip", "angles": [10]}, r"unknown key for hflip; \(it is a fixed probe\)"),
        ({"name": "shot_noise", "backend": "albumentations"}, r"shot_noise has no albumentations backend"),
        ({"name": "rotation", "angles": [10], "severities": [1]}, "give severities or custom angles, not both"),
        ({"name": "rotation", "backend": "opencv"}, "backend"),
    ],
)
def test_bad_perturbation_entries_fail_with_one_clear_line(
    perturbation: dict, message: str, write_yaml: Callable[..., Path], tiny_experiment: dict
) -> None:
    tiny_experiment["perturbations"] = [perturbation]
    with pytest.raises(HarnessError, match=message):
        resolve_experiment(load_config(write_yaml(tiny_experiment)))


def test_the_same_perturbation_on_two_backends_is_filed_under_two_labels(
    write_yaml: Callable[..., Path], tiny_experiment: dict
) -> None:
    tiny_experiment["perturbations"] = ["rotation", {"name": "rotation", "backend": "albumentations"}]
    labels = [c.perturbation for c in experiment_cells(load_config(write_yaml(tiny_experiment)))]
    assert labels[1] == "rotation" and labels[-1] == "rotation@albumentations"
    tiny_experiment["perturbations"] = ["rotation", "rotation"]
    with pytest.raises(HarnessError, match="'rotation' is listed twice"):
        load_config(write_yaml(tiny_experiment))


def test_shorthand_names_and_defaults(tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]) -> None:
    config = load_config(write_yaml(tiny_experiment))
    assert config.models[1].name == "deep_cnn_tiny" and config.models[1].train is None
    assert config.perturbations[0].severities is None  # the whole table
    assert config.perturbations[1].severities == (1, 5)


def test_recipe_overrides_only_the_keys_given(tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]) -> None:
    resolved = resolve(load_config(write_yaml(tiny_experiment)))
    recipe = resolved[0].recipe
    assert recipe is not None and recipe.epochs == 2 and recipe.batch_size == 32
    assert recipe.lr == 2e-3 and recipe.schedule == "onecycle"  # from the registered recipe


def test_cli_overrides_win_over_the_yaml(tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]) -> None:
    config = load_config(write_yaml(tiny_experiment), {"seed": 9, "data.dir": "/elsewhere"})
    assert config.seed == 9 and str(config.data.dir) == "/elsewhere"
    assert config.data.verify is False  # untouched keys stay


BAD_CONFIGS = [
    ({"modles": ["baseline_cnn"]}, "unknown key 'modles'; did you mean 'models'?"),
    ({"models": [{"name": "baseline_cnn", "trian": {}}]}, "unknown key 'models[0].trian'; did you mean 'train'?"),
    ({"evaluation": {"batchsize": 5}}, "unknown key 'evaluation.batchsize'; did you mean 'batch_size'?"),
    ({"perturbations": [{"name": "contrast_down", "severities": [1, 7]}]}, "severity 7 is impossible"),
    ({"perturbations": [{"name": "contrast_down", "severities": [2, 2]}]}, "severities repeat"),
    (
        {"models": [{"name": "baseline_cnn", "train": {"epochs": -3}}]},
        "models[0].train.epochs: Input should be greater",
    ),
    ({"models": [{"name": "baseline_cnn", "train": {"lr": "fast"}}]}, "models[0].train.lr: Input should be a valid"),
    ({"models": [{"name": "baseline_cnn", "train": {"optimizer": "lion"}}]}, "models[0].train.optimizer: Input should"),
    ({"seed": "abc"}, "seed: Input should be a valid integer"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
    ({"evaluation": {"precision": "int8"}}, "evaluation.precision: Input should be 'float32'"),
    ({"models": []}, "models: Tuple should have at least 1 item"),
    ({"models": ["baseline_cnn", "baseline_cnn"]}, "model 'baseline_cnn' is listed twice"),
    ({"models": [{"name": "x", "factory": "not a path"}]}, "factory must look like 'package.module:function'"),
    ({"name": "has space"}, "name: String should match pattern"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs_give_one_line_with_the_key_path(
    change: dict[str, Any], message: str, tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]
) -> None:
    path = write_yaml({**tiny_experiment, **change})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and text.startswith(str(path))


UNKNOWN_NAMES = [
    ({"models": ["deep_cn"]}, "models[0].name: unknown model 'deep_cn'; did you mean 'deep_cnn'? Available:"),
    ({"perturbations": ["brightnes"]}, "perturbations[0].name: unknown perturbation 'brightnes'; did you mean"),
    ({"models": [{"name": "x", "factory": "no_such_module_xyz:build"}]}, "cannot import 'no_such_module_xyz'"),
    ({"models": [{"name": "x", "factory": "tests.conftest:no_such_fn"}]}, "has no callable 'no_such_fn'"),
]


@pytest.mark.parametrize(("change", "message"), UNKNOWN_NAMES, ids=[m for _, m in UNKNOWN_NAMES])
def test_unknown_names_are_caught_before_running(
    change: dict[str, Any], message: str, tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]
) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        resolve_experiment(load_config(write_yaml({**tiny_experiment, **change})))
    assert message in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [baseline_cnn\nseed: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize(
    "change",
    [{"modles": []}, {"perturbations": [{"name": "rotation", "severities": [7]}]}, {"models": ["deep_cn"]}],
)
def test_cli_validate_exits_2_with_one_line(
    change: dict[str, Any],
    tiny_experiment: dict[str, Any],
    write_yaml: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["validate", str(write_yaml({**tiny_experiment, **change}))])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_cli_validate_accepts_a_good_file(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write_yaml(tiny_experiment))]) == 0
    assert "ok - 2 model(s) (baseline_cnn_tiny, deep_cnn_tiny), 2 perturbation(s)" in capsys.readouterr().out


def test_cli_run_refuses_cuda_without_a_gpu(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["-q", "run", str(write_yaml(tiny_experiment)), "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": [0, 0]}, r"seeds: seeds repeat"),
        ({"seeds": [-1]}, r"seeds must lie in 0\.\.2\*\*63-1"),
        ({"seeds": []}, r"seeds"),
        ({"reference_model": "alexnet"}, r"reference_model 'alexnet' is not one of the experiment's models"),
    ],
)
def test_bad_seeds_and_reference_model_fail_with_one_clear_line(
    changes: dict, message: str, write_yaml: Callable[..., Path], tiny_experiment: dict
) -> None:
    with pytest.raises(HarnessError, match=message):
        load_config(write_yaml({**tiny_experiment, **changes}))


def test_seeds_override_seed_and_the_reference_defaults_to_the_baseline(
    write_yaml: Callable[..., Path], tiny_experiment: dict
) -> None:
    assert load_config(write_yaml({**tiny_experiment, "seed": 4})).run_seeds == (4,)
    config = load_config(write_yaml({**tiny_experiment, "seeds": [3, 1]}))
    assert config.run_seeds == (3, 1) and config.reference_model == "baseline_cnn"


def test_the_committed_remedies_report_is_its_experiment_with_three_seeds_from_a_clean_cache() -> None:
    from robustbench_fmnist.report.bundle import read_data

    reference = read_data(REPORTS / "remedies")
    experiment = load_config(EXPERIMENT_DIR / "remedies.yaml")
    recorded = parse_config(reference.run["config"]).model_dump(mode="json")
    assert recorded["models"] == experiment.model_dump(mode="json")["models"]
    assert recorded["perturbations"] == experiment.model_dump(mode="json")["perturbations"]
    assert recorded["evaluation"] == experiment.model_dump(mode="json")["evaluation"]
    assert sorted(reference.results["seed"].unique()) == sorted(experiment.run_seeds) and len(experiment.run_seeds) >= 3
    env = reference.run["environment"]
    assert env["lock"]["matches"] is True and "+dirty" not in env["git_commit"]
    assert all(m["weights"] == "trained" for m in reference.run["models"]), "a clean cache"
    assert {"deep_cnn+bn", "deep_cnn+tent"} <= set(reference.results["model"])
    assert set(reference.results["in_training"].dropna()) == {"seen", "partly seen", "held out"}


def _reference_of_its_experiment(name: str) -> Any:
    """The committed report `name`, checked to be its experiment's models, cells and adversaries, seeds 0-2,
    in the locked environment at a clean commit."""
    from robustbench_fmnist.config import config_from_record
    from robustbench_fmnist.report.bundle import read_data

    reference = read_data(REPORTS / name)
    experiment = load_config(EXPERIMENT_DIR / f"{name}.yaml").model_dump(mode="json")
    recorded = config_from_record(reference.run["config"], {}, "run.json").model_dump(mode="json")
    for key in ("models", "perturbations", "adversaries", "evaluation"):
        assert recorded[key] == experiment[key], key
    assert sorted(reference.results["seed"].unique()) == [0, 1, 2]
    env = reference.run["environment"]
    assert env["lock"]["matches"] is True and "+dirty" not in env["git_commit"]
    return reference


def test_the_committed_viewpoint_remedies_report_is_its_experiment_with_three_seeds_from_a_clean_cache() -> None:
    reference = _reference_of_its_experiment("viewpoint_remedies")
    # the reference was made in several runs over one cache that only it wrote: trained, then loaded from it
    entries = reference.run["models"]
    assert {m["weights"] for m in entries} <= {"trained", "cached"}
    assert len({Path(m["checkpoint"]).parent for m in entries}) == 1
    assert all(m["training_summary"]["history"] for m in entries), "trained by code that keeps each epoch"
    models = set(reference.results["model"])
    # the remedies: an equivariant and an invariant architecture, random and worst-of-k training, tta
    assert {"baseline_cnn", "deep_cnn", "p4_cnn", "stn_cnn", "baseline_cnn_random_point"} <= models
    assert {"baseline_cnn_worst_of_10", "baseline_cnn+tta", "baseline_cnn_worst_of_10+tta"} <= models
    assert set(reference.results.loc[reference.results["model"].str.contains("tta"), "adaptation"]) == {"tta"}
    assert {"spatial", "spatial_w10", "spatial_random"} <= set(reference.adversaries["adversary"])


def test_the_longer_training_report_is_its_experiment_and_repeats_the_viewpoint_remedies_models_it_shares() -> None:
    from robustbench_fmnist.report.bundle import read_data

    reference = _reference_of_its_experiment("viewpoint_longer_training")
    assert all(m["weights"] == "trained" for m in reference.run["models"]), "a clean cache"
    epochs = {m["name"]: m["recipe"]["epochs"] for m in reference.run["models"]}
    assert epochs == {
        "baseline_cnn": 8,
        "stn_cnn_worst_of_10": 8,
        "baseline_cnn_16_epochs": 16,
        "stn_cnn_worst_of_10_16_epochs": 16,
    }
    # trained again from an empty cache, the models both references name are the same models: every count agrees
    earlier = read_data(REPORTS / "viewpoint_remedies")
    shared = ["baseline_cnn", "stn_cnn_worst_of_10"]
    keys = {"results": ["model", "seed", "perturbation", "severity"], "adversaries": ["model", "seed", "adversary"]}
    for table, key in keys.items():
        ours, theirs = (
            getattr(r, table).loc[lambda rows: rows["model"].isin(shared)].set_index(key)["n_correct"].sort_index()
            for r in (reference, earlier)
        )
        assert len(ours) == len(theirs) > 0 and ours.equals(theirs), table


ZOO_REPORTS = sorted(p.parent for p in (REPORTS / "zoo").glob("*/run.json"))


@pytest.mark.skipif(not ZOO_REPORTS, reason="no committed zoo reports")
@pytest.mark.parametrize("folder", ZOO_REPORTS, ids=lambda p: p.name)
def test_each_committed_zoo_report_is_its_model_of_the_zoo_on_the_remedies_cells(folder: Path) -> None:
    from robustbench_fmnist.config import select_models
    from robustbench_fmnist.report.bundle import read_data

    reference = read_data(folder)
    zoo = load_config(EXPERIMENT_DIR / "zoo.yaml")
    recorded = parse_config(reference.run["config"])
    experiment = select_models(zoo, [m.name for m in recorded.models])
    assert recorded.name == folder.name == experiment.name
    for key in ("models", "perturbations", "evaluation", "seeds"):
        assert recorded.model_dump(mode="json")[key] == experiment.model_dump(mode="json")[key], key
    remedies = load_config(EXPERIMENT_DIR / "remedies.yaml")
    assert zoo.model_dump(mode="json")["perturbations"] == remedies.model_dump(mode="json")["perturbations"]
    assert sorted(reference.results["seed"].unique()) == [0, 1, 2]
    env = reference.run["environment"]
    assert env["lock"]["matches"] is True and "+dirty" not in env["git_commit"]
    assert all(m["weights"] == "trained" for m in reference.run["models"]), "a clean cache"


def test_shorten_cuts_at_a_word_boundary_and_keeps_short_text_whole() -> None:
    from robustbench_fmnist.config import shorten

    text = "training diverged in epoch 1 (loss nan); nothing was cached; lower train.lr (now 10) or check it"
    assert shorten(text, len(text)) == text
    assert shorten(text, 70) == "training diverged in epoch 1 (loss nan); nothing was cached; lower..."
    assert shorten("x" * 100, 10) == "xxxxxxx...", "one long word is still cut"


ADVERSARIES_YAML = """
adversaries:
  - {name: spatial, space: {rotation: [-30, 30, 31], translate: [-3, 3, 5]}, search: grid}
  - {name: spatial_w10, space: spatial, search: worst_of_k, k: 10}
  - {name: spatial_random, space: spatial, search: random}
  - {name: light, space: {brightness: [-0.5, 0.5, 21], contrast: [0.5, 1.5, 11]}, search: grid}
  - {name: joint, space: {rotation: [-30, 30, 13], brightness: [-0.3, 0.3, 7]}, search: grid}
  - {name: light_pgd, space: light, search: gradient, steps: 20}
"""


def test_adversaries_validate_and_a_named_space_is_the_earlier_ones(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tiny_experiment)
    path.write_text(path.read_text() + ADVERSARIES_YAML)
    assert main(["validate", str(path)]) == 0
    assert "6 adversary(ies) (spatial, spatial_w10, spatial_random, light, joint, light_pgd)" in capsys.readouterr().out
    config = load_config(path)
    spatial, w10, random, light, _, pgd = config.adversaries
    assert spatial.space == {"rotation": (-30.0, 30.0, 31), "translate": (-3.0, 3.0, 5)}
    assert list(spatial.space) == ["rotation", "translate"]  # YAML order: the enumeration order
    assert w10.space == random.space == spatial.space and pgd.space == light.space
    assert (w10.search, w10.k, pgd.search, pgd.steps, pgd.restarts) == ("worst_of_k", 10, "gradient", 20, 3)
    assert (spatial.images, spatial.max_points, spatial.k) == (500, 10_000, None)
    # translate counts twice: it moves x and y
    assert [a.point_count() for a in config.adversaries] == [31 * 5 * 5] * 3 + [21 * 11, 13 * 7, 21 * 11]
    # run.json records the resolved spaces; read back, they are the same adversaries
    assert parse_config(config.model_dump(mode="json")).adversaries == config.adversaries
    shipped = load_config(EXPERIMENT_DIR / "worst_case.yaml")
    assert shipped.adversaries == config.adversaries and shipped.run_seeds == (0, 1, 2)


def test_point_counts_agree_with_the_axes_spaces() -> None:
    """config.py cannot import the axes: its list of two-dimensional axes and the gradient's are checked here."""
    from robustbench_fmnist.config import TWO_DIMENSIONAL_AXES, AdversarySpec
    from robustbench_fmnist.perturbations.space import AXES, Space
    from robustbench_fmnist.perturbations.space_checks import GRADIENT_AXES

    assert {n for n in AXES.names() if len(AXES.get(n).dims) > 1} == TWO_DIMENSIONAL_AXES
    assert set(AXES.names()) >= GRADIENT_AXES
    space = {"rotation": (-30.0, 30.0, 4), "translate": (-2.0, 2.0, 3), "gaussian_noise": (0.0, 0.1, 2)}
    spec = AdversarySpec(name="a", space=space, search="grid")
    assert spec.point_count() == Space(tuple((n, *r) for n, r in space.items())).size == 4 * 9 * 2


BAD_ADVERSARIES = [
    ({"rotation": [-30, 30, 1]}, {}, "adversaries[0].space.rotation: one point cannot span low -30 to high 30"),
    ({"rotation": [-30, ".inf", 3]}, {}, "adversaries[0].space.rotation[1]: Input should be a finite number"),
    ({"rotation": [-30, 30]}, {}, "adversaries[0].space.rotation: give [low, high, points]"),
    ({}, {}, "adversaries[0].space: empty; name at least one axis"),
    ({"rotation": [-30, 30, 3]}, {"k": 2}, "adversaries[0].k: only search worst_of_k takes k, not grid"),
    ({"rotation": [-30, 30, 3]}, {"search": "worst_of_k", "k": 1}, "adversaries[0].k: worst_of_k needs at least 2"),
    ({"rotation": [-30, 30, 3]}, {"stepz": 3}, "unknown key 'adversaries[0].stepz'; did you mean 'steps'?"),
    ("later", {}, "adversaries[0].space: 'later' is adversaries[1], further down"),
    ({"hflip": [0, 1, 2]}, {}, "adversaries[0].space: 'hflip' has no continuous parameter"),
    ({"gausian_noise": [0, 0.1, 2]}, {}, "unknown axis 'gausian_noise'; did you mean 'gaussian_noise'?"),
    ({"rotation": [-30, 30, 101]}, {"search": "random", "max_points": 100}, "101 points, more than max_points 100;"),
]


@pytest.mark.parametrize(("space", "change", "message"), BAD_ADVERSARIES, ids=[m for *_, m in BAD_ADVERSARIES])
def test_bad_adversaries_give_one_line_with_the_key_path(
    space: Any, change: dict[str, Any], message: str, tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]
) -> None:
    first = {"name": "first", "space": space, "search": "grid", **change}
    later = {"name": "later", "space": {"rotation": [-30, 30, 3]}, "search": "grid"}
    path = write_yaml({**tiny_experiment, "adversaries": [first, later]})
    if ".inf" in str(space):  # YAML infinity, which safe_dump would quote
        path.write_text(path.read_text().replace("'.inf'", ".inf"))
    with pytest.raises(ConfigError) as info:
        resolve_experiment(load_config(path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tta_needs_no_halves_of_a_cell_but_bn_does() -> None:
    """tta averages copies of each image, so one test image is enough; bn adapts on half a cell and refuses it."""
    base = {"name": "few", "models": ["deep_cnn"], "perturbations": ["rotation"]}
    assert parse_config({**base, "evaluation": {"test_images": 1, "adaptation": ["none", "tta"]}})
    with pytest.raises(ConfigError, match=r"adaptation \['bn'\]: adapting on half a cell needs at least 4"):
        parse_config({**base, "evaluation": {"test_images": 1, "adaptation": ["none", "tta", "bn"]}})
