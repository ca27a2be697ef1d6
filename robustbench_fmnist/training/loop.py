"""Seeded training from a recipe, with the data held on the device as one tensor."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.data import Split, to_float_images
from robustbench_fmnist.errors import ModelError
from robustbench_fmnist.models.output import check_logits
from robustbench_fmnist.progress import progress_bar
from robustbench_fmnist.training.augmentation import (
    BatchAugment,
    augmentation_random,
    build_augmentation,
    build_batch_augmentation,
    jensen_shannon,
)

if TYPE_CHECKING:
    from tqdm.auto import tqdm


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    seconds: float


@dataclass
class TrainSummary:
    seconds: float
    images_per_second: float
    history: list[EpochStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _flip_crop(batch: torch.Tensor, generator: torch.Generator, crop: bool, pad: int = 2) -> torch.Tensor:
    """Random horizontal flips and (optionally) random 28x28 crops of a zero-padded batch.

    Runs on the whole batch at once: one gather instead of N small copies.
    """
    n, c, h, w = batch.shape
    flips = torch.rand(n, generator=generator).to(batch.device) < 0.5
    batch = torch.where(flips.view(n, 1, 1, 1), batch.flip(-1), batch)
    if not crop:
        return batch
    padded = F.pad(batch, (pad, pad, pad, pad))
    side = w + 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator).to(batch.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator).to(batch.device)
    rows = torch.arange(h, device=batch.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=batch.device).view(1, 1, w) + dx
    index = (rows * side + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, side * side).gather(2, index).view(n, c, h, w)


def _augmented_epoch(
    augment: Callable[..., list[torch.Tensor]], images: torch.Tensor, seed: int, recipe: TrainRecipe, epoch: int
) -> list[torch.Tensor]:
    """One epoch's augmented views of the whole training set, keyed by (seed, epoch, image index)."""
    indices = torch.arange(len(images), device=images.device)
    return augment(images, augmentation_random(seed, recipe.robust_augment.method, epoch, indices))


def _optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    # no weight decay on biases and norm parameters: decaying them only hurts accuracy
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    # fused: one kernel over all parameters instead of a dozen passes per step (~10 % of a
    # baseline training step on CPU); same update up to float rounding
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, fused=True)
    return torch.optim.AdamW(groups, lr=recipe.lr, fused=True)


def _scheduler(
    optimizer: torch.optim.Optimizer, recipe: TrainRecipe, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if recipe.schedule == "onecycle" and total_steps >= 4:
        # OneCycleLR divides by the length of its rise, which must span at least two steps
        rise = min(max(recipe.warmup_fraction, 2.0 / total_steps), 0.5)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total_steps, pct_start=rise)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@dataclass
class _Training:
    """What every step of one training run shares: the model, its optimiser and how batches are built."""

    model: nn.Module
    recipe: TrainRecipe
    name: str
    seed: int
    device: torch.device
    generator: torch.Generator  # shuffles, flips and crops
    memory_format: torch.memory_format
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    robust: Callable[..., list[torch.Tensor]] | None  # the robust augmentation of a whole epoch, if the recipe has one
    batch_robust: BatchAugment | None  # or the one that reads the model, batch by batch (worst_of_k, random_point)
    jsd: bool  # AugMix's Jensen-Shannon consistency loss over the clean image and two views


def train_model(
    model: nn.Module,
    train: Split,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device,
    name: str = "model",
) -> TrainSummary:
    """Train `model` in place; the same seed, recipe and data give the same weights on one machine.

    A loss or weights that turn NaN or infinite raise ModelError naming `name`, the seed and the epoch.
    """
    torch.manual_seed(seed)
    count = min(len(train), recipe.train_images or len(train))
    images = to_float_images(train.images[:count], device)
    labels = train.labels[:count].to(device)
    steps_per_epoch = math.ceil(count / recipe.batch_size)
    run = _start_training(model, recipe, seed=seed, device=device, name=name, steps=recipe.epochs * steps_per_epoch)
    summary = TrainSummary(seconds=0.0, images_per_second=0.0)
    start = time.perf_counter()
    with progress_bar(recipe.epochs * steps_per_epoch, f"train {name}", unit="batch") as bar:
        for epoch in range(1, recipe.epochs + 1):
            stats = _train_epoch(run, images, labels, epoch, bar)
            summary.history.append(stats)
            bar.set_postfix(epoch=epoch, loss=f"{stats.loss:.3f}", acc=f"{stats.train_accuracy:.3f}")
            if not math.isfinite(stats.loss):
                raise ModelError(
                    f"{name} seed {seed}: training diverged in epoch {epoch} (loss {stats.loss}); nothing was "
                    f"cached; lower train.lr (now {recipe.lr:g}) or check the model"
                )
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point()):
        raise ModelError(
            f"{name} seed {seed}: training left NaN or infinite weights; nothing was cached; lower train.lr"
        )
    summary.seconds = time.perf_counter() - start
    summary.images_per_second = recipe.epochs * count / summary.seconds
    model.eval()
    return summary


def _start_training(
    model: nn.Module, recipe: TrainRecipe, *, seed: int, device: torch.device, name: str, steps: int
) -> _Training:
    """`model` on `device` in training mode, with its optimiser, its schedule over `steps` steps and augmentation."""
    # shuffles and augmentation draws come from a CPU generator, so they do not depend on the device
    generator = torch.Generator().manual_seed(seed)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).train()
    optimizer = _optimizer(model, recipe)
    scheduler = _scheduler(optimizer, recipe, steps)
    robust = build_augmentation(recipe)
    return _Training(
        model=model,
        recipe=recipe,
        name=name,
        seed=seed,
        device=device,
        generator=generator,
        memory_format=memory_format,
        optimizer=optimizer,
        scheduler=scheduler,
        robust=robust,
        batch_robust=build_batch_augmentation(recipe),
        jsd=robust is not None and getattr(recipe.robust_augment, "jsd", False),
    )


def _train_epoch(run: _Training, images: torch.Tensor, labels: torch.Tensor, epoch: int, bar: tqdm) -> EpochStats:
    """One pass over the training set in a fresh random order; its mean loss and accuracy."""
    epoch_start = time.perf_counter()
    count, recipe = len(images), run.recipe
    order = torch.randperm(count, generator=run.generator).to(run.device)
    # the whole epoch's robust augmentation in one batched call: keyed per image, it is what
    # batch-by-batch calls would give, without a dozen small kernel launches per step
    views = _augmented_epoch(run.robust, images, run.seed, recipe, epoch) if run.robust is not None else []
    # AugMix's JSD trains on the clean images and two views; otherwise the view replaces the image
    sources = [images, *views] if run.jsd else views[:1] or [images]
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    for first in range(0, count, recipe.batch_size):
        index = order[first : first + recipe.batch_size]
        target = labels[index]
        inputs = _batch_inputs(run, sources, index)
        if run.batch_robust is not None:
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bfloat16"):
                inputs = run.batch_robust(run.model, inputs, target, index.cpu(), run.seed, epoch).contiguous(
                    memory_format=run.memory_format
                )
        loss, logits = _train_step(run, inputs, target)
        # accumulate on the device; reading .item() every step would stall a GPU
        loss_sum += loss.detach() * len(target)
        correct += (logits.argmax(1) == target).sum()
        bar.update(1)
    return EpochStats(
        epoch=epoch,
        loss=loss_sum.item() / count,
        train_accuracy=correct.item() / count,
        seconds=time.perf_counter() - epoch_start,
    )


def _batch_inputs(run: _Training, sources: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """The batch's images from every source (clean and/or augmented views), flipped and cropped, one after another."""
    stacked = torch.cat([source[index] for source in sources], dim=1)
    if run.recipe.augment != "none":
        # along channels, so the clean image and its views take the same flip and crop
        stacked = _flip_crop(stacked, run.generator, crop=run.recipe.augment == "flip_crop")
    return torch.cat(stacked.split(1, dim=1)).contiguous(memory_format=run.memory_format)


def _train_step(run: _Training, inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on `inputs`; returns the loss and the logits of the first source's images."""
    recipe = run.recipe
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bfloat16"):
        all_logits = run.model(inputs)
        check_logits(all_logits, len(inputs), run.name)
        logits = all_logits[: len(target)]
        loss = F.cross_entropy(logits.float(), target, label_smoothing=recipe.label_smoothing)
        if run.jsd:
            consistency = jensen_shannon(all_logits.float().split(len(target)))
            loss = loss + recipe.robust_augment.jsd_weight * consistency
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    return loss, logits
