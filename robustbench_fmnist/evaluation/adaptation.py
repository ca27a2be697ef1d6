"""Test-time adaptation: a model's predictions on one cell's images after adapting to them, unlabeled.

Every call starts from a copy of the unadapted model, so a cell's result never depends on the
cells evaluated before it. Adaptation runs in float32 with autograd where it needs it, whatever
the evaluation's precision.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustbench_fmnist.config import BatchNormAdaptation, TentAdaptation, TtaAdaptation
from robustbench_fmnist.evaluation.inference import PreparedModel, prepare_for_inference
from robustbench_fmnist.perturbations.space import Space, perturb_at
from robustbench_fmnist.registry import Registry

# predict(model, cell images (N, 1, 28, 28) on the device, settings) -> (N, classes) float32 logits
Predict = Callable[[nn.Module, torch.Tensor, "AdaptationSettings"], torch.Tensor]
NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class AdaptationSettings:
    """What every adaptation may read: its own section of `evaluation:` and how to run forward passes."""

    bn: BatchNormAdaptation
    tent: TentAdaptation
    tta: TtaAdaptation = field(default_factory=TtaAdaptation)
    batch_size: int = 1000  # images per forward pass where the adaptation does not set its own
    memory_format: torch.memory_format = torch.channels_last


@dataclass(frozen=True)
class AdaptationEntry:
    name: str
    predict: Predict | None  # None: the plain evaluation path (no adaptation)
    applies_to: Callable[[nn.Module], bool]
    needs: str  # what a model must have for it to apply, for "not applicable" lines
    description: str


ADAPTATIONS: Registry[AdaptationEntry] = Registry("adaptation")


def register_adaptation(
    name: str, *, applies_to: Callable[[nn.Module], bool], needs: str
) -> Callable[[Predict], Predict]:
    """Register a test-time adaptation under `name` (the word `evaluation.adaptation` lists)."""

    def decorate(predict: Predict) -> Predict:
        doc = (predict.__doc__ or "").strip().splitlines()
        ADAPTATIONS.add(name, AdaptationEntry(name, predict, applies_to, needs, doc[0] if doc else ""))
        return predict

    return decorate


ADAPTATIONS.add("none", AdaptationEntry("none", None, lambda model: True, "", "The trained weights as they are."))


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics: what `bn` re-estimates."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def affine_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers with a learned scale and shift: what `tent` trains."""
    return [m for m in model.modules() if isinstance(m, NORM_LAYERS) and getattr(m, "weight", None) is not None]


def not_applicable(name: str, model: nn.Module) -> str | None:
    """Why adaptation `name` cannot apply to `model`, or None when it can."""
    entry = ADAPTATIONS.get(name)
    return None if entry.applies_to(model) else f"not applicable: the model has no {entry.needs}"


def reestimate_batch_norm(model: nn.Module, images: torch.Tensor, *, prior: float, batch_size: int) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics are those of `images`, mixed with the training ones.

    mean = (N * train_mean + n * test_mean) / (N + n) for prior strength N and n images, and the
    same for the variance (Schneider et al. 2020). One forward pass, in batches: each layer's
    per-batch moments are pooled exactly (in float64) over all n images. Layers after the first
    see inputs normalised by per-batch statistics during that pass, which differ from the pooled
    ones only by sampling noise at batch sizes of hundreds.
    """
    adapted = copy.deepcopy(model).eval()
    layers = batch_norm_layers(adapted)
    batches: dict[int, list[tuple[torch.Tensor, torch.Tensor, int]]] = {layer_id: [] for layer_id in map(id, layers)}

    def record(layer: _BatchNorm, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # with momentum 1 the running statistics are exactly this batch's: free, the layer computed them
        count = inputs[0].numel() // inputs[0].shape[1]
        biased = layer.running_var.to(torch.float64, copy=True) * ((count - 1) / count)
        batches[id(layer)].append((layer.running_mean.to(torch.float64, copy=True), biased, count))

    trained = {
        id(layer): (layer.running_mean.to(torch.float64, copy=True), layer.running_var.to(torch.float64, copy=True),
                    layer.momentum)
        for layer in layers
    }  # fmt: skip
    hooks = [layer.register_forward_hook(record) for layer in layers]
    for layer in layers:
        layer.train()  # normalise by the batch's own statistics, as the adapted layer will by the pooled ones
        layer.momentum = 1.0
    try:
        with torch.no_grad():
            for first, last in batch_bounds(len(images), batch_size):
                adapted(images[first:last])
    finally:
        for hook in hooks:
            hook.remove()
    n_images = len(images)
    for layer in layers:
        mean, variance, _ = _pooled(batches[id(layer)])
        train_mean, train_variance, layer.momentum = trained[id(layer)]
        share = n_images / (prior + n_images)
        layer.running_mean.copy_((1 - share) * train_mean + share * mean)
        layer.running_var.copy_((1 - share) * train_variance + share * variance)
        layer.eval()
    return adapted


def _pooled(parts: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and unbiased variance of the union of batches from each batch's (mean, biased variance, count)."""
    count = sum(n for _, _, n in parts)
    mean = sum(m * n for m, _, n in parts) / count
    # within-batch plus between-batch sums of squares (Chan et al.'s pairwise formula)
    squares = sum(v * n + (m - mean).square() * n for m, v, n in parts)
    return mean, squares / max(count - 1, 1), count


def _logits(model: nn.Module, images: torch.Tensor, settings: AdaptationSettings) -> torch.Tensor:
    """The adapted model's logits through the one inference path (eager: each cell adapts new weights)."""
    return _prepared_logits(_prepared(model, images.device, settings), images, settings)


def _prepared(model: nn.Module, device: torch.device, settings: AdaptationSettings) -> PreparedModel:
    return prepare_for_inference(model, device, channels_last=settings.memory_format == torch.channels_last,
                                 compile="never")  # fmt: skip


def _prepared_logits(prepared: PreparedModel, images: torch.Tensor, settings: AdaptationSettings) -> torch.Tensor:
    parts = [
        prepared(images[first : first + settings.batch_size]).float()
        for first in range(0, len(images), settings.batch_size)
    ]
    return torch.cat(parts)


@register_adaptation("bn", applies_to=lambda model: bool(batch_norm_layers(model)), needs="BatchNorm layers")
def batch_norm_predict(model: nn.Module, images: torch.Tensor, settings: AdaptationSettings) -> torch.Tensor:
    """BatchNorm statistics re-estimated on the cell's other half (or, transductively, on the scored images)."""
    limit = settings.bn.images
    with torch.no_grad():
        if settings.bn.transductive:
            adapted = reestimate_batch_norm(
                model, images[:limit], prior=settings.bn.prior, batch_size=settings.batch_size
            )
            return _logits(adapted, images, settings)
        # adapt on one half and score the other, then swap: every image is scored once, never by
        # statistics it contributed to
        half = len(images) // 2
        halves = (slice(0, half), slice(half, len(images)))
        logits = []
        for scored, other in (halves, halves[::-1]):
            adapt_on = images[other][:limit]
            adapted = reestimate_batch_norm(model, adapt_on, prior=settings.bn.prior, batch_size=settings.batch_size)
            logits.append(_logits(adapted, images[scored], settings))
        return torch.cat(logits)


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(first, last) of each batch; a last batch of one image joins the one before (BatchNorm needs two)."""
    bounds = [(first, min(first + batch_size, count)) for first in range(0, count, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row's softmax, in nats."""
    log_probabilities = logits.log_softmax(1)
    return -(log_probabilities.exp() * log_probabilities).sum(1)


def configure_tent(model: nn.Module) -> tuple[nn.Module, list[nn.Parameter]]:
    """A copy of `model` set up as tent does: BatchNorm on batch statistics, only norm affines trainable."""
    adapted = copy.deepcopy(model).eval()
    adapted.requires_grad_(False)
    for layer in adapted.modules():
        if isinstance(layer, _BatchNorm):
            # tent normalises by each test batch's statistics and forgets the training ones (every
            # BatchNorm layer, with or without an affine, as DequanWang/tent's configure_model does)
            layer.train()
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
    parameters: list[nn.Parameter] = []
    for layer in affine_norm_layers(adapted):
        for parameter in (layer.weight, layer.bias):
            if parameter is not None:
                parameter.requires_grad_(True)
                parameters.append(parameter)
    return adapted, parameters


@register_adaptation("tent", applies_to=lambda model: bool(affine_norm_layers(model)), needs="normalisation layers")
def tent_predict(model: nn.Module, images: torch.Tensor, settings: AdaptationSettings) -> torch.Tensor:
    """Tent: online entropy minimisation over the cell's batches in order; each batch is scored by its last forward."""
    config = settings.tent
    with torch.inference_mode(False), torch.enable_grad():
        adapted, parameters = configure_tent(model)
        # tent's CIFAR setting: Adam, betas (0.9, 0.999), no weight decay, one step per batch
        optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999), weight_decay=0.0)
        outputs = []
        for first, last in batch_bounds(len(images), config.batch_size):
            batch = images[first:last].clone().contiguous(memory_format=settings.memory_format)
            for _ in range(config.steps):
                logits = adapted(batch)
                loss = entropy(logits).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            outputs.append(logits.detach().float())
        return torch.cat(outputs)


def tta_space(settings: TtaAdaptation) -> Space:
    """The space `tta` takes its copies at, as the adversaries' spaces are built."""
    return Space.of(settings.space)


class AveragedOverCopies(nn.Module):
    """A model whose logits are the average over a copy of its input at every point of a space (`tta`).

    Each copy is the suite's own transformation at one point (perturbations/space.py), so a copy at
    the space's identity is the image itself. Differentiable in its input, so a gradient search can
    go through it as through any model.
    """

    def __init__(self, module: nn.Module, space: Space) -> None:
        super().__init__()
        self.module, self.space = module, space

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=images.device)
        for values in self.space.points:
            total = total + self.module(perturb_at(images, self.space, values)).float()
        return total / self.space.size


def averaged_over_copies(prepared: PreparedModel, settings: TtaAdaptation) -> PreparedModel:
    """`prepared` behind test-time augmentation: k = the space's points forward passes per image."""
    return replace(prepared, module=AveragedOverCopies(prepared.module, tta_space(settings)), eager=None)


@register_adaptation("tta", applies_to=lambda model: True, needs="")
def tta_predict(model: nn.Module, images: torch.Tensor, settings: AdaptationSettings) -> torch.Tensor:
    """Test-time augmentation: the logits averaged over a copy of each image at every point of `tta.space`.

    With one point at the space's identity, tta is the plain evaluation.
    """
    with torch.no_grad():
        return _prepared_logits(averaged_over_copies(_prepared(model, images.device, settings), settings.tta), images,
                                settings)  # fmt: skip
