"""From a checked config to the models it trains or loads: each model's builder and training recipe.

Every name the config uses is checked against its registry here, with one ConfigError naming
the key; a model named by `factory:` is imported here, which runs that module's code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robustbench_fmnist.config import (
    ExperimentConfig,
    ModelSpec,
    SuiteAugment,
    TrainRecipe,
    shorten,
)
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.models import MODELS
from robustbench_fmnist.models.keras_model import KerasBuilder, read_keras
from robustbench_fmnist.models.onnx_model import OnnxBuilder, read_onnx
from robustbench_fmnist.models.outside import InputForm, Normalization
from robustbench_fmnist.models.timm_models import TIMM_RECIPE, check_timm_name, timm_architecture, timm_builder
from robustbench_fmnist.perturbations import PERTURBATIONS


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec whose builder has been found and whose training recipe is final."""

    spec: ModelSpec
    builder: Callable[..., nn.Module]
    recipe: TrainRecipe | None  # None: weights come from the spec's checkpoint, or with its ONNX or Keras file

    @property
    def weights_file(self) -> Path | None:
        """The user's file the weights come from (a checkpoint, an ONNX or Keras file), None for trained weights."""
        given = self.spec.checkpoint or self.spec.onnx or self.spec.keras
        return None if given is None else Path(given)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def user_built(self) -> bool:
        """Whether the user decides how the model is built (a factory, kwargs or a timm name): its errors are theirs."""
        return bool(
            self.spec.factory or self.spec.kwargs or self.spec.outside_kind or timm_architecture(self.architecture)
        )

    @property
    def architecture(self) -> str:
        """What is built: the factory, the ONNX file, the registered model a label names, or the registered name."""
        if self.spec.outside_kind is not None:
            return f"{self.spec.outside_kind}:{self.weights_file.name}"
        return self.spec.factory or self.spec.architecture or self.spec.name

    def adaptations(self, default: tuple[str, ...]) -> tuple[str, ...]:
        """The test-time adaptations this model is evaluated with."""
        return self.spec.adaptation or default

    def label(self, adaptation: str) -> str:
        """The name results are filed under for one adaptation: the model's own for none."""
        return self.spec.label(adaptation)

    def build(self) -> nn.Module:
        """A new instance of the model (random weights: seed torch first for reproducible ones)."""
        try:
            model = self.builder(**self.spec.kwargs)
        except Exception as exc:
            if not self.user_built:
                raise  # a registered model failing to build with its defaults is a bug: keep its traceback
            source = f"factory {self.spec.factory}" if self.spec.factory else "its builder"
            if timm_architecture(self.architecture) and not self.spec.kwargs:
                source = "timm.create_model"
            raise ConfigError(
                f"model {self.name!r}: {source} with kwargs {shorten(self.spec.kwargs)} raised "
                f"{type(exc).__name__}: {shorten(exc)}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {self.name!r}: the factory returned {type(model).__name__}, not an nn.Module")
        return model


def resolve(config: ExperimentConfig) -> list[ResolvedModel]:
    """Check every model the config names against the registries; raise one clear ConfigError."""
    return [_resolve_model(i, spec) for i, spec in enumerate(config.models)]


def resolve_model(spec: ModelSpec, index: int = 0) -> ResolvedModel:
    """One model spec checked against the registries (a `factory:` imported, which runs its module)."""
    return _resolve_model(index, spec)


def _resolve_model(index: int, spec: ModelSpec) -> ResolvedModel:
    if spec.onnx is not None:
        return ResolvedModel(spec, onnx_builder(spec, where=f"models[{index}].onnx"), None)
    if spec.keras is not None:
        return ResolvedModel(spec, keras_builder(spec, where=f"models[{index}].keras"), None)
    timm_arch = None if spec.factory else timm_architecture(spec.architecture or spec.name)
    if spec.factory:
        builder = import_factory(spec.factory, where=f"models[{index}].factory")
        recipe = TrainRecipe()
    elif timm_arch is not None:
        try:
            check_timm_name(timm_arch, spec.kwargs)
        except ConfigError as exc:
            raise ConfigError(f"models[{index}].{'architecture' if spec.architecture else 'name'}: {exc}") from None
        builder, recipe = timm_builder(timm_arch), TIMM_RECIPE
    elif spec.architecture is not None:
        if spec.architecture not in MODELS:
            raise ConfigError(f"models[{index}].architecture: {MODELS.unknown_message(spec.architecture)}")
        entry = MODELS.get(spec.architecture)
        builder, recipe = entry.builder, entry.recipe
    elif spec.name in MODELS:
        entry = MODELS.get(spec.name)
        builder, recipe = entry.builder, entry.recipe
    else:
        message = MODELS.unknown_message(spec.name)
        raise ConfigError(
            f"models[{index}].name: {message} (or timm:<name> for any timm model, a factory: "
            "'package.module:function', or `architecture:` naming a registered model when the name is a label)"
        )
    if spec.factory and spec.architecture:
        raise ConfigError(f"models[{index}]: give factory or architecture, not both")
    recipe = None if spec.checkpoint else recipe.merged(spec.train)
    if recipe is not None and isinstance(recipe.robust_augment, SuiteAugment):
        for name in recipe.robust_augment.perturbations:
            if name not in PERTURBATIONS:
                where = f"models[{index}].train.robust_augment.perturbations"
                raise ConfigError(f"{where}: {PERTURBATIONS.unknown_message(name)}")
    return ResolvedModel(spec, builder, recipe)


def onnx_builder(spec: ModelSpec, where: str) -> OnnxBuilder:
    """The builder of an onnx: entry, its file read and checked now (a ConfigError naming `where` and the fix)."""
    content, signature = read_onnx(Path(spec.onnx), spec.layout or "nchw", spec.channels or 1, where)
    normalize = None if spec.normalize is None else Normalization(spec.normalize.mean, spec.normalize.std)
    return OnnxBuilder(content, signature, normalize)


def keras_builder(spec: ModelSpec, where: str) -> KerasBuilder:
    """The builder of a keras: entry, its file loaded and checked now (a ConfigError naming `where` and the fix)."""
    layout, channels = spec.layout or "nhwc", spec.channels or 1
    content = read_keras(Path(spec.keras), layout, channels, where)
    normalize = None if spec.normalize is None else Normalization(spec.normalize.mean, spec.normalize.std)
    return KerasBuilder(content, InputForm(layout, channels, normalize), f"{where}: {spec.keras}")


def import_factory(path: str, where: str = "factory") -> Callable[..., nn.Module]:
    """The callable `package.module:function` names, after importing its module (which runs its code).

    Callables of the standard library and builtins are refused: a YAML file could otherwise run
    `os:system` with its `kwargs`.
    """
    module_name, _, attr = path.partition(":")
    if _is_standard_library(module_name):
        raise ConfigError(f"{where}: {path!r} is in the standard library; a factory must build an nn.Module")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r} ({shorten(exc)}); is it on PYTHONPATH?") from None
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() on import is the user's too
        raise ConfigError(f"{where}: importing {module_name!r} raised {type(exc).__name__}: {shorten(exc)}") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ConfigError(f"{where}: {module_name!r} has no callable {attr!r}")
    defined_in = getattr(builder, "__module__", None) or ""
    if _is_standard_library(defined_in):
        raise ConfigError(f"{where}: {path!r} is {defined_in}.{attr} from the standard library; refused")
    if _is_non_model_dependency(defined_in, builder):
        raise ConfigError(
            f"{where}: {path!r} comes from {defined_in.partition('.')[0]}, which builds no models (it could load "
            "or run arbitrary data); refused"
        )
    return builder


# the harness's own dependencies that hold no model builders but do hold loaders that run code
# (yaml.unsafe_load, pandas.read_pickle, numpy.load(allow_pickle=True), torch.load(weights_only=False))
_NON_MODEL_PACKAGES = frozenset(
    {"yaml", "numpy", "pandas", "pydantic", "pydantic_core", "matplotlib", "markdown", "PIL", "tqdm", "filelock",
     "albumentations", "albucore", "cv2", "scipy", "pytest", "setuptools", "pip", "pkg_resources", "dill",
     "joblib", "cloudpickle", "fsspec", "huggingface_hub", "safetensors"}
)  # fmt: skip


def _is_standard_library(module_name: str) -> bool:
    top = module_name.partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _is_non_model_dependency(module_name: str, builder: object) -> bool:
    """A callable from a dependency that builds no models; from torch, anything but an nn.Module class."""
    top = module_name.partition(".")[0]
    if top == "torch":
        return not (isinstance(builder, type) and issubclass(builder, nn.Module))
    return top in _NON_MODEL_PACKAGES
