"""Typed experiment configuration, filled from YAML. CLI flags > YAML > defaults.

Only structure, types and value ranges are checked here; names of models and
perturbations are checked against their registries by `experiment.resolve`, which keeps
this module free of imports from the rest of the package (data flows one way).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.files import read_user_file, safe_file_name

MAX_SEVERITY = 5
MAX_SEED = 2**63 - 1  # torch's generators take 64 bits; results.csv stores seeds as int64
MAX_NAME_LENGTH = 200  # a folder name, with room for the staging suffix under the 255-byte limit
MAX_MODEL_NAME_LENGTH = 100  # figure file names are built from it
MAX_THREADS = 1024
MAX_BATCH = 1 << 16  # 65,536 images of 28x28 float32 is 205 MB per batch
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # after alias expansion: a few hundred bytes of nested aliases can expand to billions
MIN_ADAPTATION_IMAGES = 4  # bn adapts on one half of a cell: two images each, the least BatchNorm can use
MAX_SHOWN = 80  # characters of a user's value quoted in an error message
# keys whose relative paths are taken from the YAML file's folder, not the working directory
PATH_KEYS = (("data", "dir"), ("output_dir",), ("cache_dir",), ("noise_from",))
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")  # matched whole
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NAME_PATTERN = r"^[^\x00-\x1f|]+$"  # no control characters or '|': names go into files and tables
MAX_ADVERSARY_POINTS = 10_000  # a grid evaluates every point: forward passes per image
MAX_TTA_COPIES = 100  # test-time augmentation: forward passes per image and cell
MAX_WORST_OF_K = 100  # worst-of-k training: forward passes per image and step
# axes that add two dimensions to a space, x and y (perturbations.space.AxisEntry.dims; config cannot
# import it, perturbations import config): tests/test_config.py keeps the two in step
TWO_DIMENSIONAL_AXES = frozenset({"translate"})


class KeyedError(ValueError):
    """A validator's error about a key below the one it validates (an adversary's `k`): `key` extends the location."""

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SuiteAugment(_Strict):
    """The suite's own perturbations as training augmentation, drawn per image."""

    method: Literal["suite"]
    perturbations: tuple[str, ...] = Field(min_length=1, description="perturbation names to train on")
    severities: tuple[int, int] = Field((1, 3), description="lowest and highest severity, drawn uniformly")
    p: float = Field(0.5, ge=0, le=1, description="chance that an image is perturbed")

    @field_validator("severities")
    @classmethod
    def _severity_span(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= MAX_SEVERITY:
            raise ValueError(
                f"severities must be [low, high] with 1 <= low <= high <= {MAX_SEVERITY}, got {list(value)}"
            )
        return value

    @field_validator("perturbations")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"perturbations repeat: {list(value)}")
        return value


def _axis_form(value: Any) -> Any:
    # a range of the wrong length would otherwise read "missing required key ...rotation[2]"
    if isinstance(value, list | tuple) and len(value) != 3:
        raise ValueError(f"give [low, high, points], e.g. [-30, 30, 31]; got {len(value)} value(s)")
    return value


def _axis_range(value: tuple[float, float, int]) -> tuple[float, float, int]:
    low, high, points = value
    if points < 1:
        raise ValueError(f"points {points}: an axis needs at least 1 ([low, high, points])")
    if low > high:
        raise ValueError(f"low {low:g} > high {high:g}")
    if points == 1 and low != high:
        raise ValueError(f"one point cannot span low {low:g} to high {high:g}; give low == high, or more points")
    return value


# (low, high, points); the YAML writes [low, high, points]
AxisRange = Annotated[tuple[float, float, int], BeforeValidator(_axis_form), AfterValidator(_axis_range)]


def space_point_count(space: dict[str, tuple[float, float, int]]) -> int:
    """How many points a space has: the product of the axes' points, translate's counted for x and for y."""
    return math.prod(points ** (2 if axis in TWO_DIMENSIONAL_AXES else 1) for axis, (_, _, points) in space.items())


def _nonempty_space(value: Any) -> Any:
    if isinstance(value, dict) and not value:
        raise ValueError("empty; name at least one axis, e.g. {rotation: [-30, 30, 31]}")
    return value


AUGMIX_OPERATIONS = ("autocontrast", "equalize", "posterize", "solarize", "rotate", "shear", "translate")


class AugMixAugment(_Strict):
    """AugMix (Hendrycks et al. 2020): a convex mix of `width` random chains of operations, mixed with the image."""

    method: Literal["augmix"]
    severity: int = Field(3, ge=1, le=10, description="operation strength, AugMix's 1..10 scale")
    width: int = Field(3, ge=1, le=8, description="chains mixed per image")
    depth: int = Field(-1, ge=-1, le=5, description="operations per chain; -1 draws 1..3 per chain")
    alpha: float = Field(1.0, gt=0, description="Dirichlet and Beta concentration of the mixing weights")
    # AugMix drops the operations that overlap its test corruptions; here the geometric ones overlap
    # the viewpoint shifts, so they are off unless named (and then their shifts count as seen)
    operations: tuple[Literal[AUGMIX_OPERATIONS], ...] = Field(  # type: ignore[valid-type]
        ("autocontrast", "equalize", "posterize", "solarize"), min_length=1
    )
    jsd: bool = Field(False, description="Jensen-Shannon consistency loss over the clean and two AugMix views")
    jsd_weight: float = Field(12.0, ge=0, description="weight of the consistency loss (AugMix's lambda)")


class PolicyAugment(_Strict):
    """torchvision's TrivialAugmentWide or RandAugment, applied per image."""

    method: Literal["trivialaugment", "randaugment"]
    num_ops: int = Field(2, ge=1, le=10, description="RandAugment: operations per image")
    magnitude: int = Field(9, ge=0, le=30, description="RandAugment: magnitude on its 0..30 scale")


class NoiseAugment(_Strict):
    """Gaussian-noise augmentation (Rusak et al. 2020): clip(x + sigma * z) on a share of the images."""

    method: Literal["gaussian_noise"]
    sigma: float = Field(0.1, gt=0, le=1, description="noise standard deviation, in intensity")
    p: float = Field(0.5, ge=0, le=1, description="chance that an image is noised")


class SpaceAugment(_Strict):
    """Training over a space of transformations (the adversaries' syntax): per image one random point of it
    (`random_point`), or the worst of k random points under the current model (`worst_of_k`, Engstrom et al.
    2019)."""

    method: Literal["random_point", "worst_of_k"]
    space: dict[str, AxisRange] = Field(description="axis -> [low, high, points], as an adversary's space")
    k: int = Field(10, ge=1, le=MAX_WORST_OF_K, description="worst_of_k: points tried per image and step")

    _space_given = field_validator("space", mode="before")(classmethod(lambda cls, v: _nonempty_space(v)))

    @model_validator(mode="after")
    def _k_for_worst_of_k(self) -> SpaceAugment:
        if self.method == "random_point" and "k" in self.model_fields_set:
            raise KeyedError(("k",), "only method worst_of_k takes k (random_point draws one point); drop it")
        count = space_point_count(self.space)
        if count > MAX_ADVERSARY_POINTS:  # the points are laid out once, before the first batch
            raise KeyedError(
                ("space",), f"{count:,} points, more than {MAX_ADVERSARY_POINTS:,}; give the axes fewer points"
            )
        return self


RobustAugment = Annotated[
    Union[SuiteAugment, AugMixAugment, PolicyAugment, NoiseAugment, SpaceAugment],  # noqa: UP007
    Field(discriminator="method"),
]


def _method_shorthand(value: Any) -> Any:
    # `robust_augment: trivialaugment` means `robust_augment: {method: trivialaugment}`
    return {"method": value} if isinstance(value, str) else value


class TrainRecipe(_Strict):
    """How a model is trained. Registered models carry their own tuned defaults."""

    epochs: int = Field(5, ge=1, description="passes over the training set")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam)")
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.25, ge=0, lt=1, description="one-cycle rise, share of steps")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: Literal["none", "flip", "flip_crop"] = "none"
    precision: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="autocast dtype for training; evaluation has its own setting"
    )
    channels_last: bool = True
    train_images: int | None = Field(None, ge=1, description="train on the first N images only")
    robust_augment: RobustAugment | None = Field(
        None,
        description="robust-training augmentation: suite, augmix, trivialaugment, randaugment, gaussian_noise, "
        "random_point, worst_of_k",
    )

    _robust_shorthand = field_validator("robust_augment", mode="before")(
        classmethod(lambda cls, v: _method_shorthand(v))
    )

    def merged(self, overrides: TrainRecipe | None) -> TrainRecipe:
        """This recipe with the fields a YAML file set explicitly in `overrides`."""
        if overrides is None:
            return self
        return self.model_copy(update={k: getattr(overrides, k) for k in overrides.model_fields_set})


def _name_shorthand(value: Any) -> Any:
    # `- brightness` in YAML means `- {name: brightness}`
    return {"name": value} if isinstance(value, str) else value


Adaptation = Literal["none", "bn", "tent", "tta"]


class BatchNormAdaptation(_Strict):
    """`bn`: BatchNorm statistics re-estimated on unlabeled images of the cell (Schneider et al. 2020)."""

    prior: float = Field(0.0, ge=0, description="N: weight of the training statistics, in images (0: test only)")
    images: int | None = Field(None, ge=2, description="adaptation images per half (default: the whole half)")
    transductive: bool = Field(False, description="adapt on the scored images themselves instead of the other half")


class TentAdaptation(_Strict):
    """`tent` (Wang et al. 2021): entropy minimisation on the normalisation layers' affine parameters."""

    lr: float = Field(1e-3, gt=0, description="Adam learning rate (tent's CIFAR setting)")
    batch_size: int = Field(128, ge=2, le=MAX_BATCH, description="images per online step (tent's CIFAR setting)")
    steps: int = Field(1, ge=1, le=10, description="gradient steps per batch")


def _adaptation_list(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _distinct_adaptations(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError(f"adaptations repeat: {list(value)}")
    if value is not None and "none" not in value:
        raise ValueError(f"{list(value)} lacks none: every adaptation is measured against the unadapted model")
    return value


class NormalizeSpec(_Strict):
    """(x - mean) / std on [0, 1] images: what an outside model was trained on."""

    mean: float
    std: float = Field(gt=0)


class ModelSpec(_Strict):
    name: str = Field(
        min_length=1,
        max_length=MAX_MODEL_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="registry name, or a label when `factory` is set",
    )
    factory: str | None = Field(None, description="`package.module:function` returning an nn.Module")
    checkpoint: Path | None = Field(None, description="state_dict file; skips training")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the builder")
    train: TrainRecipe | None = Field(None, description="overrides of the model's default recipe")
    architecture: str | None = Field(
        None, description="the registered model to build when `name` is a label (e.g. deep_cnn_augmix)"
    )
    adaptation: tuple[Adaptation, ...] | None = Field(
        None, min_length=1, description="this model's test-time adaptations (default: evaluation.adaptation)"
    )
    against: str | None = Field(
        None,
        description="judge this model as a remedy against that model of the experiment (another architecture, e.g. "
        "p4_cnn against baseline_cnn); a recipe or adaptation is set against its own architecture's standard",
    )

    onnx: Path | None = Field(
        None, description="an ONNX file, evaluated through ONNX Runtime as it is (the onnx extra); `name` is its label"
    )
    keras: Path | None = Field(
        None, description="a Keras 3 .keras file, run on Keras' torch backend (the keras extra); `name` is its label"
    )
    layout: Literal["nchw", "nhwc"] | None = Field(
        None, description="onnx, keras: the input's layout (default nchw for onnx, nhwc for keras)"
    )
    channels: Literal[1, 3] | None = Field(
        None, description="onnx, keras: 3 when the model takes three channels (the grey one repeated); default 1"
    )
    normalize: NormalizeSpec | None = Field(
        None, description="onnx, keras: (x - mean) / std before the model, if it expects it"
    )

    _adaptation_shorthand = field_validator("adaptation", mode="before")(
        classmethod(lambda cls, v: _adaptation_list(v))
    )

    @model_validator(mode="after")
    def _outside_model_keys(self) -> ModelSpec:
        # by value, not by the keys given: a dumped config (run.json) spells every default out
        if self.onnx is not None and self.keras is not None:
            raise KeyedError(("keras",), "give onnx: or keras:, not both")
        kind = self.outside_kind
        if kind is None:
            for key in ("layout", "channels", "normalize"):
                if getattr(self, key) is not None:
                    raise KeyedError((key,), f"{key} is for an onnx: or keras: model; drop it or give the model's file")
            return self
        article = "an" if kind == "onnx" else "a"
        for key in ("factory", "architecture", "checkpoint", "kwargs", "train"):
            if getattr(self, key):
                raise KeyedError(
                    (key,),
                    f"{article} {kind}: model is evaluated as the file gives it, with no {key}; drop {key}",
                )
        return self

    @property
    def outside_kind(self) -> str | None:
        """`onnx` or `keras` for a model from another framework's file, None for the harness's own."""
        return "onnx" if self.onnx is not None else "keras" if self.keras is not None else None

    _adaptation_distinct = field_validator("adaptation")(classmethod(lambda cls, v: _distinct_adaptations(v)))

    _shorthand = model_validator(mode="before")(classmethod(lambda cls, v: _name_shorthand(v)))

    def label(self, adaptation: str) -> str:
        """The name results are filed under for one adaptation: the model's own for none."""
        return self.name if adaptation == "none" else f"{self.name}+{adaptation}"

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        if value is not None and not FACTORY_PATTERN.match(value):
            raise ValueError(f"factory must look like 'package.module:function', got {value!r}")
        return value


Backend = Annotated[str, Field(min_length=1)]  # checked against perturbations.backends.BACKENDS in resolution
_PERTURBATION_KEYS = {"name", "severities", "values", "values_key", "backend"}


def _perturbation_shorthand(value: Any) -> Any:
    value = _name_shorthand(value)
    if not isinstance(value, dict):
        return value
    # `- rotation: {angles: [...]}` means `- {name: rotation, angles: [...]}`
    if len(value) == 1:
        ((key, body),) = value.items()
        if key not in _PERTURBATION_KEYS and isinstance(body, dict | None):
            value = {"name": key, **(body or {})}
    # `rotation: {angles: [0, 10, 20]}`: one key beyond the known ones, holding a list, is the
    # perturbation's own name for custom values; `experiment.resolve` checks it against the registry
    extra = [k for k in value if k not in _PERTURBATION_KEYS]
    if len(extra) == 1 and isinstance(value[extra[0]], list | tuple) and "values" not in value:
        value = dict(value)
        value["values_key"] = extra[0]
        value["values"] = value.pop(extra[0])
    return value


class PerturbationSpec(_Strict):
    name: str = Field(min_length=1)
    severities: tuple[int, ...] | None = Field(None, min_length=1, description="default: every level of the table")
    values: tuple[float, ...] | None = Field(None, min_length=1, max_length=64, description="custom parameters")
    values_key: str | None = Field(None, description="the YAML key the custom values came from")
    backend: Backend | None = Field(None, description="default: evaluation.backend")

    _shorthand = model_validator(mode="before")(classmethod(lambda cls, v: _perturbation_shorthand(v)))

    @field_validator("severities")
    @classmethod
    def _severity_range(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        for s in value:
            if not 0 <= s <= MAX_SEVERITY:
                raise ValueError(f"severity {s} is impossible: severities run from 0 (clean) to {MAX_SEVERITY}")
        if len(set(value)) != len(value):
            raise ValueError(f"severities repeat: {list(value)}")
        if not any(value):
            raise ValueError("only severity 0, the clean cell every run has; give at least one of 1..5")
        return tuple(sorted(value))

    @model_validator(mode="after")
    def _severities_or_values(self) -> PerturbationSpec:
        if self.severities is not None and self.values is not None:
            raise ValueError(f"{self.name}: give severities or custom {self.values_key or 'values'}, not both")
        return self

    def label(self, default_backend: str) -> str:
        """The name results are filed under: the perturbation, tagged when albumentations computes it."""
        backend = self.backend or default_backend
        return self.name if backend == "torch" else f"{self.name}@{backend}"


class TtaAdaptation(_Strict):
    """`tta`: the logits averaged over copies of each image, one at every point of a space (k copies, k passes)."""

    space: dict[str, AxisRange] = Field(
        default_factory=lambda: {"rotation": (-20.0, 20.0, 5)},
        description="axis -> [low, high, points]: one copy at each point (k = the points); as adversaries' spaces",
    )

    _space_given = field_validator("space", mode="before")(classmethod(lambda cls, v: _nonempty_space(v)))

    @property
    def copies(self) -> int:
        """k: the copies of each image, one forward pass each."""
        return space_point_count(self.space)

    @model_validator(mode="after")
    def _few_copies(self) -> TtaAdaptation:
        if self.copies > MAX_TTA_COPIES:
            raise KeyedError(
                ("space",), f"{self.copies:,} copies, more than {MAX_TTA_COPIES}: each costs a forward pass; use fewer"
            )
        return self


class AdversarySpec(_Strict):
    """One entry of `adversaries:`: a space of perturbation parameters, and how its worst point per image is found."""

    name: str = Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH, pattern=NAME_PATTERN)
    space: dict[str, AxisRange] = Field(
        description="axis -> [low, high, points], in order; in the YAML, an earlier adversary's name reuses its space"
    )
    search: Literal["grid", "random", "worst_of_k", "gradient"]
    k: int | None = Field(None, description="worst_of_k: points drawn per image (at least 2)")
    steps: int = Field(20, ge=1, description="gradient: ascent steps per restart")
    restarts: int = Field(3, ge=1, description="gradient: starting points per image")
    images: int = Field(500, ge=1, description="test images every point is evaluated on")
    test_images: int | None = Field(
        None, ge=1, description="search the first N test images only (default: all the evaluation's)"
    )
    max_points: int = Field(
        MAX_ADVERSARY_POINTS, ge=1, description="a space with more points is refused unless this is raised"
    )

    @field_validator("space", mode="before")
    @classmethod
    def _space_given(cls, value: Any) -> Any:
        if isinstance(value, str):  # ExperimentConfig replaces a name by the earlier adversary's space
            raise ValueError(f"{value!r}: a name reuses an earlier adversary's space only inside `adversaries:`")
        return _nonempty_space(value)

    def point_count(self) -> int:
        """How many points the space has: the product of the axes' points, translate's counted for x and for y."""
        return space_point_count(self.space)

    @model_validator(mode="after")
    def _search_settings(self) -> AdversarySpec:
        count = self.point_count()
        if count > self.max_points:
            passes = (
                f"; a grid evaluates every one: {count:,} forward passes per image" if self.search == "grid" else ""
            )
            raise KeyedError(
                ("space",),
                f"{count:,} points, more than max_points {self.max_points:,}{passes}; "
                f"raise `max_points:` to allow it, or give the axes fewer points",
            )
        if self.search != "worst_of_k":
            if self.k is not None:
                raise KeyedError(("k",), f"only search worst_of_k takes k, not {self.search}; drop it")
            return self
        if self.k is None:
            raise KeyedError(("k",), "search worst_of_k needs k, the points drawn per image (at least 2)")
        if self.k < 2:
            raise KeyedError(
                ("k",), f"worst_of_k needs at least 2 points per image, got {self.k} (k: 1 is one random point)"
            )
        if self.k > count:
            raise KeyedError(
                ("k",), f"{self.k} is more than the space's {count:,} points; lower k, or give the space more points"
            )
        return self


def _reuse_spaces(value: Any) -> Any:
    """`space: NAME` replaced by a copy of the earlier adversary NAME's space, so `space` is always a mapping."""
    if not isinstance(value, list | tuple):
        return value
    names = [a.get("name") if isinstance(a, dict) else getattr(a, "name", None) for a in value]
    spaces: dict[str, Any] = {}
    resolved = []
    for i, adversary in enumerate(value):
        if isinstance(adversary, dict) and isinstance(adversary.get("space"), str):
            wanted = adversary["space"]
            if wanted not in spaces:
                raise KeyedError((i, "space"), _unknown_space(wanted, names, i))
            adversary = {**adversary, "space": copy.deepcopy(spaces[wanted])}
        space = adversary.get("space") if isinstance(adversary, dict) else getattr(adversary, "space", None)
        if isinstance(names[i], str):
            spaces.setdefault(names[i], space)  # a repeated name is refused after validation
        resolved.append(adversary)
    return resolved


def _unknown_space(wanted: str, names: list[Any], index: int) -> str:
    """Why `space: wanted` of adversary `index` names no earlier adversary."""
    if wanted in names[index:]:
        later = names.index(wanted, index)
        where = "this adversary itself" if later == index else f"adversaries[{later}], further down"
        return f"{wanted!r} is {where}; a space can reuse only an earlier adversary's (move that one up)"
    earlier = [n for n in names[:index] if isinstance(n, str)]
    close = difflib.get_close_matches(wanted, earlier, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return (
        f"no earlier adversary is named {wanted!r}{hint} A name reuses an earlier adversary's space "
        f"(earlier: {', '.join(earlier) or 'none'}); otherwise give {{axis: [low, high, points], ...}}"
    )


class DataConfig(_Strict):
    dir: Path | None = Field(None, description="folder with the four IDX .gz files")
    download: bool = Field(False, description="download from the official mirrors if not found")
    verify: bool = Field(True, description="check counts and SHA-256 of the decompressed files")


class EvaluationConfig(_Strict):
    batch_size: int = Field(1000, ge=1, le=MAX_BATCH)
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    channels_last: bool = True
    test_images: int | None = Field(None, ge=1, description="evaluate on the first N test images only")
    backend: Backend = Field("torch", description="perturbation backend: torch (batched) or albumentations")
    adaptation: tuple[Adaptation, ...] = Field(
        ("none",), min_length=1, description="test-time adaptations, each evaluated: none, bn, tent, tta"
    )
    bn: BatchNormAdaptation = Field(default_factory=BatchNormAdaptation)
    tent: TentAdaptation = Field(default_factory=TentAdaptation)
    tta: TtaAdaptation = Field(default_factory=TtaAdaptation)
    compile: Literal["auto", "always", "never"] = Field(
        "auto", description="torch.compile the model for the sweep: auto compiles where it pays (inference.py)"
    )

    _adaptation_shorthand = field_validator("adaptation", mode="before")(
        classmethod(lambda cls, v: _adaptation_list(v))
    )
    _adaptation_distinct = field_validator("adaptation")(classmethod(lambda cls, v: _distinct_adaptations(v)))


class ThroughputConfig(_Strict):
    """What `bench` measures, and `run` too when `enabled`."""

    enabled: bool = Field(False, description="run measures throughput as well and puts it in the report")
    devices: tuple[Literal["cpu", "cuda"], ...] = Field(("cpu", "cuda"), min_length=1)
    batch_sizes: tuple[int, ...] = Field((1, 32, 256, 1024, 4096), min_length=1)
    dtypes: tuple[Literal["float32", "bfloat16", "float16"], ...] = Field(("float32", "bfloat16"), min_length=1)
    channels_last: bool = True
    compile: bool = Field(False, description="also measure torch.compile'd inference")
    images: int = Field(10_000, ge=1, description="images per inference measurement")
    seconds_per_repeat: float | None = Field(
        2.0, gt=0, description="caps each timed repeat: a slow model times fewer images (at least one batch)"
    )
    repeats: int = Field(5, ge=1)
    latency: bool = Field(True, description="p50/p95 of single-image forward passes")
    training_batch_size: int | None = Field(128, ge=1, le=MAX_BATCH, description="None skips training throughput")
    perturbations: bool = Field(True, description="each perturbation's images/s at its most severe level")
    sweep: bool = Field(True, description="the evaluation sweep's images/s against the bare forward pass")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= b <= MAX_BATCH for b in value):
            raise ValueError(f"batch sizes must lie in 1..{MAX_BATCH}, got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"batch sizes repeat: {list(value)}")
        return value


class ExecutorConfig(_Strict):
    """Where the plan's tasks run: `local` (in this process) or `ray` (a Ray cluster)."""

    kind: str = Field("local", min_length=1, description="an executor of `ls executors`: local or ray")
    address: str | None = Field(
        None, description="ray: 'auto' (the cluster `ray start` started here), host:port or ray://host:10001"
    )
    cpus_per_task: float = Field(1.0, gt=0, le=1024, description="ray: CPUs each task reserves")
    gpus_per_task: float = Field(0.0, ge=0, le=64, description="ray: GPUs each task reserves (device cuda)")
    retries: int = Field(1, ge=0, le=10, description="times a failed task is run again before it is reported")
    spread: bool = Field(
        False, description="ray: spread the tasks over the cluster's nodes (Ray's SPREAD strategy) instead of packing"
    )


DEFAULT_REFERENCE = "baseline_cnn"


class ExperimentConfig(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME_LENGTH, description="report folder name"
    )
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    seeds: tuple[int, ...] | None = Field(
        None, min_length=1, max_length=20, description="train and evaluate once per seed; overrides `seed`"
    )
    reference_model: str = Field(DEFAULT_REFERENCE, description="the model CE and mCE are normalised by")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="CPU threads; default: physical cores, capped at the usable CPUs"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    perturbations: tuple[PerturbationSpec, ...] = Field(min_length=1)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    throughput: ThroughputConfig = Field(default_factory=ThroughputConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    output_dir: Path = Path("reports")
    cache_dir: Path | None = Field(None, description="checkpoint cache; default ~/.cache/robustbench_fmnist")
    noise_from: Path | None = Field(
        None, description="a multi-seed report of the same recipes: each cell is set against its seed spread"
    )
    adversaries: tuple[AdversarySpec, ...] = Field((), description="worst-case searches over perturbation spaces")

    _reused_spaces = field_validator("adversaries", mode="before")(classmethod(lambda cls, v: _reuse_spaces(v)))

    @field_validator("adversaries")
    @classmethod
    def _distinct_adversaries(cls, value: tuple[AdversarySpec, ...]) -> tuple[AdversarySpec, ...]:
        first: dict[str, int] = {}
        for i, spec in enumerate(value):
            if spec.name in first:
                raise KeyedError(
                    (i, "name"), f"adversary {spec.name!r} is listed twice (also adversaries[{first[spec.name]}])"
                )
            first[spec.name] = i
        return value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seed_values(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None:
            if any(not 0 <= s <= MAX_SEED for s in value):
                raise ValueError(f"seeds must lie in 0..2**63-1, got {list(value)}")
            if len(set(value)) != len(value):
                raise ValueError(f"seeds repeat: {list(value)}")
        return value

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The seeds this experiment runs: `seeds`, or just `seed`."""
        return self.seeds or (self.seed,)

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentConfig:
        labelled = [p.label(self.evaluation.backend) for p in self.perturbations]
        # an adapted model's rows go under "name+adaptation": those names must not clash with another model's
        model_labels = [s.label(a) for s in self.models for a in s.adaptation or self.evaluation.adaptation]
        for kind, names in (("model", model_labels), ("perturbation", labelled)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} {dupes[0]!r} is listed twice")
        adapted = {a for s in self.models for a in s.adaptation or self.evaluation.adaptation} - {"none"}
        few = self.evaluation.test_images
        halves = adapted - {"tta"}  # tta adapts nothing: it averages copies of each image
        if halves and few is not None and few < MIN_ADAPTATION_IMAGES:
            raise ValueError(
                f"evaluation.test_images {few} with adaptation {sorted(halves)}: adapting on half a cell needs at "
                f"least {MIN_ADAPTATION_IMAGES} images (BatchNorm needs two per batch); raise test_images"
            )
        if adapted and self.evaluation.precision != "float32":
            raise ValueError(
                f"evaluation.precision {self.evaluation.precision} with adaptation {sorted(adapted)}: adaptation "
                "runs in float32, so its rows would not match; set precision: float32"
            )
        models = [s.name for s in self.models]
        for i, spec in enumerate(self.models):
            if spec.against is not None and (spec.against not in models or spec.against == spec.name):
                close = difflib.get_close_matches(spec.against, [m for m in models if m != spec.name], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" ({', '.join(models)})"
                raise KeyedError(
                    ("models", i, "against"), f"{spec.against!r} is not another model of the experiment{hint}"
                )
        # the default may be absent (mCE is then n/a): a run.json records it even where the YAML did not
        named = "reference_model" in self.model_fields_set and self.reference_model != DEFAULT_REFERENCE
        if named and self.reference_model not in models:
            raise ValueError(
                f"reference_model {self.reference_model!r} is not one of the experiment's models ({', '.join(models)})"
            )
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Parse and validate an experiment YAML. `overrides` (from CLI flags) win over the file.

    Dotted keys in `overrides` address nested fields, e.g. {"data.dir": "/tmp/fm"}. Relative
    paths in the file are taken from the file's folder; those in `overrides` from the working one.
    """
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (name, models, ...)")
    raw.setdefault("name", path.stem)
    _resolve_paths(raw, path.parent)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_config(raw, source=str(path))


def select_models(config: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """The experiment with only the named models; with one, its report is named after the model.

    So the models of a large experiment (a zoo) can be run, and their reports committed, one at a time.
    """
    known = [spec.name for spec in config.models]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"--model {name!r}: not a model of {config.name}; {hint}its models: {', '.join(known)}")
    chosen = [spec for spec in config.models if spec.name in names]
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["models"] = [spec.model_dump(mode="json", exclude_unset=True) for spec in chosen]
    if config.reference_model not in names:
        raw.pop("reference_model", None)  # one model's report has no reference: its mCE is n/a
    if len(chosen) == 1:
        raw["name"] = model_report_name(chosen[0].name, config.name)
    return parse_config(raw, source=f"{config.name} with --model {' '.join(names)}")


def model_report_name(model: str, experiment: str) -> str:
    """The report folder name of one model run alone: its name made safe for a path (`timm:x` -> `timm_x`)."""
    return safe_file_name(model).lstrip("_.-")[:MAX_NAME_LENGTH] or experiment


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`, as plain Python data; ConfigError for anything that is not one."""
    try:
        text = read_user_file(path, MAX_YAML_BYTES, "an experiment YAML", ConfigError).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file (see experiments/ for examples)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give a YAML file, e.g. experiments/lighting.yaml") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); is it an experiment YAML?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        try:
            too_big = node is not None and _expanded_size(node) > MAX_YAML_NODES
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if too_big:
            raise ConfigError(f"{path}: its aliases expand to more than {MAX_YAML_NODES:,} values; write it out")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: not valid YAML ({shorten(problem)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be an experiment YAML") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes `root` stands for once every alias is expanded (memoised, so it stays fast)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a node that reaches itself (a recursive alias) counts once
            if isinstance(node, yaml.MappingNode):
                _check_unique_keys(node)
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            sizes[id(node)] = min(1 + sum(size(n) for n in children), MAX_YAML_NODES + 1)
        return sizes[id(node)]

    return size(root)


def _check_unique_keys(mapping: yaml.MappingNode) -> None:
    # PyYAML keeps the last of two equal keys silently: `seed: -1` ... `seed: 0` would pass as 0
    seen: set[str] = set()
    for key, _ in mapping.value:
        if isinstance(key, yaml.ScalarNode):
            if key.value in seen:
                raise ConfigError(f"line {key.start_mark.line + 1}: key {shorten(key.value)!r} appears twice")
            seen.add(key.value)


def config_from_record(
    raw: dict[str, Any], overrides: dict[str, Any], source: str, recipes: dict[str, dict[str, Any]] | None = None
) -> ExperimentConfig:
    """The configuration a report's run.json recorded, with what is machine-specific reset and `overrides` applied.

    The record lists a model's `train:` overrides in full, the unset ones at their defaults, which would
    train another model than the one recorded: a model with `train:` takes the recipe its training
    recorded (`recipes`, by model name, from run.json's models) in full.

    Data, cache and output folders and `noise_from` were paths on the machine that made the report:
    they go back to their defaults unless `overrides` names them; throughput measurement is off.
    A Ray `executor.address` named the sender's cluster, whose results this process would unpickle:
    it goes back to this machine's own ('auto').
    """
    raw = dict(raw)
    raw["data"] = {**(raw.get("data") or {}), "dir": None}
    raw.update(cache_dir=None, output_dir="reports", noise_from=None)
    raw["throughput"] = {**(raw.get("throughput") or {}), "enabled": False}
    if isinstance(raw.get("executor"), dict):
        raw["executor"] = {**raw["executor"], "address": None}
    raw["models"] = [_unset_random_point_k(_trained_as_recorded(m, recipes or {})) for m in raw.get("models") or []]
    names = [m.get("name") if isinstance(m, dict) else m for m in raw["models"]]
    if raw.get("reference_model") not in names:
        raw.pop("reference_model", None)  # the default, recorded though unset: a set one must name a model
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    return parse_config(raw, source=source)


def _resolve_paths(raw: dict[str, Any], folder: Path) -> None:
    """Make the YAML's relative paths relative to `folder` (the YAML's own), in place."""
    places: list[tuple[dict[str, Any], str]] = []
    for keys in PATH_KEYS:
        node: Any = raw
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            places.append((node, keys[-1]))
    models = raw.get("models")
    if isinstance(models, list):
        places += [(m, key) for m in models if isinstance(m, dict) for key in ("checkpoint", "onnx", "keras")]
    for node, key in places:
        value = node.get(key)
        if isinstance(value, str) and value:
            expanded = Path(value).expanduser()
            # joined, not normalised: "sub/../x" must climb from where the link `sub` points, as the OS does
            node[key] = str(expanded) if expanded.is_absolute() else str(folder / value)


def shorten(text: object, limit: int = MAX_SHOWN) -> str:
    """A user's value or a message, cut to at most `limit` characters at a word boundary where there is one."""
    text = str(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    if space > limit // 2:  # a word cut in two ("; low...") reads as a different word
        cut = cut[:space].rstrip(" ,;:")
    return cut + "..."


def parse_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(exc.errors()[0])}") from None


def _trained_as_recorded(model: Any, recipes: dict[str, dict[str, Any]]) -> Any:
    """A recorded model with `train:` overrides, with the recipe its training recorded as every override."""
    if isinstance(model, dict) and isinstance(model.get("train"), dict) and model.get("name") in recipes:
        return {**model, "train": dict(recipes[model["name"]])}
    return model


def _unset_random_point_k(model: Any) -> Any:
    """A recorded model without random_point's `k`: a record names every field, and k is refused there."""
    train = model.get("train") if isinstance(model, dict) else None
    augment = train.get("robust_augment") if isinstance(train, dict) else None
    if not isinstance(augment, dict) or augment.get("method") != "random_point" or "k" not in augment:
        return model
    unset = {key: value for key, value in augment.items() if key != "k"}
    return {**model, "train": {**train, "robust_augment": unset}}


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a mapping in the YAML")
    node[leaf] = value


def format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def describe_error(error: dict[str, Any]) -> str:
    """One line for a pydantic error: where, what, and what would be valid."""
    loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
    raised = (error.get("ctx") or {}).get("error")
    if isinstance(raised, KeyedError):
        loc += raised.key
    if error["type"] == "extra_forbidden":
        parent = _model_at(ExperimentConfig, loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        return f"unknown key {format_loc(loc)!r}{hint} Valid keys here: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"missing required key {format_loc(loc)!r}"
    msg = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {shorten(repr(got))})"
    return f"{format_loc(loc)}: {msg}{shown}"


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member's type name into `loc`, e.g. "function-before[...]"
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return None
        node = node.model_fields[part].annotation
    node = _unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional[...] and tuple[X, ...] down to the model class inside."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else annotation
    if origin in (tuple, list):
        return _unwrap(typing.get_args(annotation)[0])
    return annotation
