from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_fmnist.config import ModelSpec, TrainRecipe
from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.errors import CheckpointError
from robustbench_fmnist.models import MODELS, create_model
from robustbench_fmnist.training.checkpoints import cache_key, load_user_checkpoint
from robustbench_fmnist.training.loop import _flip_crop, train_model
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import obtain_model as prepare_model

CPU = torch.device("cpu")
RECIPE = TrainRecipe(epochs=3, batch_size=32, lr=1e-2)


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return (model.eval()(to_float_images(images, CPU)).argmax(1) == labels).float().mean().item()


def test_training_learns_the_synthetic_task(synthetic_dir: Path) -> None:
    data = load_fashion_mnist(synthetic_dir, verify=False)
    torch.manual_seed(0)
    model = create_model("baseline_cnn_tiny")
    before = _accuracy(model, data.test.images, data.test.labels)
    summary = train_model(model, data.train, RECIPE, seed=0, device=CPU)
    after = _accuracy(model, data.test.images, data.test.labels)
    assert after > 0.8 > before + 0.3
    assert len(summary.history) == 3 and summary.history[-1].loss < summary.history[0].loss
    assert summary.seconds > 0 and summary.images_per_second > 0


@pytest.mark.parametrize("recipe", [RECIPE, RECIPE.model_copy(update={"augment": "flip_crop", "optimizer": "sgd"})])
def test_same_seed_gives_the_same_weights(synthetic_dir: Path, recipe: TrainRecipe) -> None:
    data = load_fashion_mnist(synthetic_dir, verify=False)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("deep_cnn_tiny")
        train_model(model, data.train, recipe.model_copy(update={"epochs": 1}), seed=3, device=CPU)
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_flip_crop_moves_content_but_keeps_it() -> None:
    batch = torch.zeros(64, 1, 28, 28)
    batch[:, :, 10:18, 10:14] = 1.0  # away from the border, so crops never cut it
    out = _flip_crop(batch, torch.Generator().manual_seed(0), crop=True)
    assert out.shape == batch.shape
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), batch.sum(dim=(1, 2, 3)))
    moved = (out != batch).flatten(1).any(1)
    assert 40 < int(moved.sum()) <= 64  # most images flipped or shifted
    flipped_only = _flip_crop(batch, torch.Generator().manual_seed(0), crop=False)
    assert all(torch.equal(f, b) or torch.equal(f, b.flip(-1)) for f, b in zip(flipped_only, batch, strict=True))


def test_train_images_limits_the_training_set(synthetic_dir: Path) -> None:
    from robustbench_fmnist.data import Split

    data = load_fashion_mnist(synthetic_dir, verify=False)
    recipe = RECIPE.model_copy(update={"epochs": 1})
    weights = []
    for split, train_images in ((data.train, 64), (Split(data.train.images[:64], data.train.labels[:64]), None)):
        torch.manual_seed(0)
        model = create_model("baseline_cnn_tiny")
        train_model(model, split, recipe.model_copy(update={"train_images": train_images}), seed=0, device=CPU)
        weights.append(model.state_dict())
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items()), "the first 64 images, and only those"
    torch.manual_seed(0)
    everything = create_model("baseline_cnn_tiny")
    train_model(everything, data.train, recipe, seed=0, device=CPU)
    assert not all(torch.equal(v, weights[0][k]) for k, v in everything.state_dict().items())


# --- the checkpoint cache ---


def _resolved(name: str = "baseline_cnn_tiny", **recipe: object) -> ResolvedModel:
    entry = MODELS.get(name)
    return ResolvedModel(ModelSpec(name=name), entry.builder, entry.recipe.model_copy(update=recipe))


def _key(*args: object, code: str = "code", device_type: str = "cpu") -> str:
    defaults = ["m", {}, TrainRecipe(), "data", 0]
    defaults[: len(args)] = args
    return cache_key(*defaults, code=code, device_type=device_type).digest  # type: ignore[arg-type]


def test_cache_key_depends_on_everything_that_changes_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _key()
    assert base == _key()
    others = [
        _key("n"),
        _key("m", {"width": 8}),
        _key("m", {}, TrainRecipe(epochs=6)),
        _key("m", {}, TrainRecipe(), "other data"),
        _key("m", {}, TrainRecipe(), "data", 1),
        _key(code="edited code"),
        _key(device_type="cuda"),
    ]
    monkeypatch.setattr(torch, "__version__", "9.1.0")
    others.append(_key())
    assert len({base, *others}) == 1 + len(others)
    monkeypatch.setattr(torch, "__version__", "9.1.3+cpu")
    assert _key() == others[-1], "a patch release of torch keeps the key"


def test_a_factory_s_source_is_part_of_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from robustbench_fmnist.training.checkpoints import code_digest

    module = tmp_path / "my_factory_module.py"
    source = (
        "from robustbench_fmnist.models import create_model\n\ndef build():\n    return create_model('deep_cnn_tiny')\n"
    )
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_digest(importlib.import_module("my_factory_module").build)
    module.write_text(module.read_text() + "# an edit\n")
    del sys.modules["my_factory_module"]
    second = code_digest(importlib.import_module("my_factory_module").build)
    assert first != second
    registered = code_digest(MODELS.get("baseline_cnn").builder)
    assert registered == code_digest(MODELS.get("deep_cnn").builder), "registered models share the package's code"
    assert registered not in (first, second)


def test_weights_have_an_identity_and_a_training_record(synthetic_dir: Path, tmp_path: Path) -> None:
    from robustbench_fmnist.training.checkpoints import weights_sha256

    data = load_fashion_mnist(synthetic_dir, verify=False)
    model, info = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    assert info["weights_sha256"] == weights_sha256(model) and len(info["weights_sha256"]) == 64
    trained_with = info["trained_with"]
    assert trained_with["torch"] == torch.__version__ and trained_with["device_type"] == "cpu"
    assert {"cpu_capability", "threads", "harness", "harness_commit"} <= set(trained_with)
    _, cached = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    assert cached["weights"] == "cached"
    assert cached["weights_sha256"] == info["weights_sha256"] and cached["trained_with"] == trained_with
    _, other_seed = prepare_model(_resolved(), data, seed=1, device=CPU, cache_dir=tmp_path, retrain=False)
    assert other_seed["weights_sha256"] != info["weights_sha256"]
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-7
    assert weights_sha256(model) != info["weights_sha256"], "one changed weight changes the hash"


def test_second_run_reuses_the_cache_and_retrain_forces_training(synthetic_dir: Path, tmp_path: Path) -> None:
    data = load_fashion_mnist(synthetic_dir, verify=False)
    kwargs = {"seed": 0, "device": CPU, "cache_dir": tmp_path}
    first, info = prepare_model(_resolved(), data, retrain=False, **kwargs)
    assert info["weights"] == "trained" and Path(info["checkpoint"]).is_file()
    second, info2 = prepare_model(_resolved(), data, retrain=False, **kwargs)
    assert info2["weights"] == "cached" and info2["train_seconds"] == info["train_seconds"]
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name])
    _, info3 = prepare_model(_resolved(), data, retrain=True, **kwargs)
    assert info3["weights"] == "trained"
    _, info4 = prepare_model(_resolved(epochs=2), data, retrain=False, **kwargs)
    assert info4["weights"] == "trained" and info4["checkpoint"] != info["checkpoint"]
    assert not list(tmp_path.rglob(".*.tmp")), "no temporary files left behind"


def test_a_corrupt_cache_entry_is_retrained_and_replaced(synthetic_dir: Path, tmp_path: Path) -> None:
    data = load_fashion_mnist(synthetic_dir, verify=False)
    _, info = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    path = Path(info["checkpoint"])
    path.write_bytes(path.read_bytes()[:100])
    _, again = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    assert again["weights"] == "trained"
    _, third = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    assert third["weights"] == "cached"


def test_user_checkpoints_load_or_fail_clearly(tmp_path: Path) -> None:
    model = create_model("baseline_cnn_tiny")
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    fresh = create_model("baseline_cnn_tiny")
    load_user_checkpoint(good, fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": model.state_dict()}, wrapped)
    load_user_checkpoint(wrapped, create_model("baseline_cnn_tiny"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_user_checkpoint(tmp_path / "missing.pt", fresh)
    with pytest.raises(CheckpointError, match="does not fit its model"):
        load_user_checkpoint(good, create_model("deep_cnn_tiny"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_user_checkpoint(garbage, fresh)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 9])
def test_very_short_runs_train_with_every_schedule(synthetic_dir: Path, steps: int) -> None:
    data = load_fashion_mnist(synthetic_dir, verify=False)
    for schedule in ("onecycle", "cosine", "constant"):
        recipe = TrainRecipe(epochs=1, batch_size=32, train_images=32 * steps, schedule=schedule)
        torch.manual_seed(0)
        model = create_model("baseline_cnn_tiny")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        summary = train_model(model, data.train, recipe, seed=0, device=CPU)
        assert len(summary.history) == 1 and torch.isfinite(torch.tensor(summary.history[0].loss))
        changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
        assert changed, f"{schedule} with {steps} steps left every weight as it was"


# --- only good weights enter the cache ---


def _cached_path(data: object, tmp_path: Path, name: str = "baseline_cnn_tiny") -> Path:
    from robustbench_fmnist.training.checkpoints import checkpoint_dir

    resolved = _resolved(name)
    from robustbench_fmnist.training.checkpoints import code_digest

    key = cache_key(name, {}, resolved.recipe, data.checksum, 0, code=code_digest(resolved.builder), device_type="cpu")  # type: ignore[attr-defined]
    return checkpoint_dir(tmp_path) / key.filename


def _spoil(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    state = dict(state)
    first = next(iter(state))
    if how == "extra key":
        state["extra.weight"] = torch.zeros(3)
    elif how == "missing key":
        del state[first]
    elif how == "wrong shape":
        state[first] = torch.zeros(1)
    elif how == "NaN weights":
        state[first] = torch.full_like(state[first], float("nan"))
    return state


@pytest.mark.parametrize("how", ["extra key", "missing key", "wrong shape", "NaN weights"])
def test_a_rejected_cache_entry_leaves_no_tensor_behind_and_is_replaced_by_good_weights(
    synthetic_dir: Path, tmp_path: Path, how: str
) -> None:
    from robustbench_fmnist.training.checkpoints import load_cached, save_checkpoint

    data = load_fashion_mnist(synthetic_dir, verify=False)
    path = _cached_path(data, tmp_path)
    trained = create_model("baseline_cnn_tiny")
    train_model(trained, data.train, _resolved().recipe, seed=0, device=CPU)  # type: ignore[arg-type]
    save_checkpoint(path, trained, {})
    torch.save({"state_dict": _spoil(trained.state_dict(), how), "metadata": {}}, path)

    untouched = create_model("baseline_cnn_tiny")
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    assert load_cached(path, untouched) is None
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items()), "nothing was copied"

    model, info = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    assert info["weights"] == "trained"
    clean, _ = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path / "clean", retrain=False)
    assert all(torch.equal(v, clean.state_dict()[k]) for k, v in model.state_dict().items()), "same as a clean start"
    _, again = prepare_model(_resolved(), data, seed=0, device=CPU, cache_dir=tmp_path, retrain=False)
    assert again["weights"] == "cached"


class _Diverging(torch.nn.Module):
    """A model whose logits turn NaN after a few steps, as a too-high learning rate makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.linear(x.flatten(1))
        return logits * float("nan") if self.training and self.calls > 3 else logits


def test_a_diverged_training_stops_with_one_line_and_caches_nothing(synthetic_dir: Path, tmp_path: Path) -> None:
    from robustbench_fmnist.errors import ModelError

    data = load_fashion_mnist(synthetic_dir, verify=False)
    resolved = ResolvedModel(ModelSpec(name="diverging"), _Diverging, TrainRecipe(epochs=2, batch_size=64))
    with pytest.raises(ModelError, match=r"^diverging seed 3: training diverged in epoch 1 \(loss nan\)"):
        prepare_model(resolved, data, seed=3, device=CPU, cache_dir=tmp_path, retrain=False)
    assert not list((tmp_path / "checkpoints").glob("*")), "nothing cached"


def test_run_json_never_holds_a_bare_nan(tmp_path: Path) -> None:
    import json

    from robustbench_fmnist.report.bundle import write_data
    from tests.test_report import _data

    data = _data()
    data.run["models"] = [{"name": "m", "eval_images_per_second": float("nan"), "loss": [1.0, float("inf")]}]
    write_data(tmp_path, data)

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in run.json")

    run = json.loads((tmp_path / "run.json").read_text(), parse_constant=refuse)
    assert run["models"][0] == {"name": "m", "eval_images_per_second": None, "loss": [1.0, None]}
