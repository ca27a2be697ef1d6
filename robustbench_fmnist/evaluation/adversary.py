"""The worst case per image: a model searched over a perturbation space, image by image.

Every search starts from the same per-image random draw of the space's points (keyed by the
seed, the space and the image's position, so every adversary over one space draws the same
points) and spends forward passes only where they can still change an image's verdict:
- `random`: the draw (one forward pass per image): the average case;
- `worst_of_k`: k draws, the first of them the random one; an image is done once one fools it;
- `grid`: a sample of `images` images at every point (for consistency, heatmaps and the average
  over the space; its fooling rates order the points), then the rest point by point in order
  of budget level (the sub-grids of 1/5, 2/5, ... of the space's reach), the points that fool
  most first within a level, each image dropped once a point fools it. The first fooling point
  found is then in the smallest budget that fools the image, so one pass gives the whole
  robustness curve;
- `gradient`: signed-gradient ascent of the loss on the continuous parameters through the
  differentiable warp and light, from `restarts` random points, `steps` steps each, checked at
  the end through the suite's own kernels.
An image wrong on the clean test set counts as fooled by every search. What is stored is what
was observed per image (classes, points, probabilities); every accuracy is derived from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_fmnist.evaluation.inference import PreparedModel
from robustbench_fmnist.evaluation.sweep import NO_PREDICTION
from robustbench_fmnist.models.output import check_logits
from robustbench_fmnist.perturbations.geometry import affine_matrices, to_normalised
from robustbench_fmnist.perturbations.random import ImageRandom, derive_key
from robustbench_fmnist.perturbations.space import Space, perturb_at
from robustbench_fmnist.progress import progress_bar

NONE = -1  # no point fooled the image
BUDGET_LEVELS = 5  # the grid's budgets: 0, 1/5, ..., 1 of the space's reach


@dataclass(frozen=True)
class Search:
    """How an adversary searches its space (the `search:` keys of an `adversaries:` entry)."""

    kind: str  # grid | random | worst_of_k | gradient
    k: int = 1
    images: int = 500  # grid: the sample evaluated at every point
    steps: int = 20
    restarts: int = 3


@dataclass
class AdversaryOutputs:
    """Per-image observations of one adversary on one model (N test images, P points, D dimensions)."""

    clean_prediction: torch.Tensor  # (N,) uint8
    random_point: torch.Tensor  # (N,) int32: the draw every search starts from
    random_prediction: torch.Tensor  # (N,) uint8
    fooling_point: torch.Tensor  # (N,) int32: the first point found to fool the image (grid: smallest radius), or -1
    fooling_prediction: torch.Tensor  # (N,) uint8 at that point (NO_PREDICTION where none)
    worst_point: torch.Tensor  # (N,) int32: the evaluated point of lowest true-class probability
    worst_true_probability: torch.Tensor  # (N,) float32 there
    sample_indices: torch.Tensor  # (S,) int64: grid's images evaluated at every point
    sample_predictions: torch.Tensor  # (S, P) uint8
    found_values: torch.Tensor  # (N, D) float32: gradient's final parameters ((N, 0) for the other searches)
    forward_passes: int = 0

    def tensors(self) -> dict[str, torch.Tensor]:
        """The observations as the record stores them."""
        return {name: value for name, value in vars(self).items() if isinstance(value, torch.Tensor)}


def draws(space: Space, count: int, k: int, seed: int, indices: torch.Tensor) -> torch.Tensor:
    """(count, k) int64 point indices: each image's k draws from the space, the first its random one.

    Keyed by the space's axes, not the adversary's name: a random, a worst-of-k and a grid
    adversary over one space draw the same points for the same image.
    """
    rng = ImageRandom(derive_key(seed, "adversary-draws", repr(space.axes)), indices.cpu())
    return torch.stack([rng.bits(stream=j).long() % space.size for j in range(k)], 1)[:count]


class _Scorer:
    """Runs (image, point) pairs through the model in batches and keeps each image's verdict.

    An image's verdict is its first fooling point by rank (the search's order), the point's
    class there, and the evaluated point of lowest true-class probability.
    """

    def __init__(
        self, prepared: PreparedModel, images: torch.Tensor, labels: torch.Tensor, space: Space, *, name: str, seed: int
    ) -> None:
        self.prepared, self.images, self.labels, self.space, self.name, self.seed = (
            prepared, images, labels, space, name, seed
        )  # fmt: skip
        count = len(labels)
        self.fooling_point = torch.full((count,), NONE, dtype=torch.int64)
        self.fooling_rank = torch.full((count,), math.inf, dtype=torch.float64)  # -1: wrong on the clean image
        self.fooling_prediction = torch.full((count,), NO_PREDICTION, dtype=torch.uint8)
        self.worst_point = torch.full((count,), NONE, dtype=torch.int64)
        self.worst_probability = torch.full((count,), math.inf, dtype=torch.float32)
        self.forward_passes = 0

    def standing(self) -> torch.Tensor:
        """(N,) bool: the images right on the clean image that no point has fooled yet."""
        return self.fooling_rank == math.inf

    def fooled_clean(self, clean: torch.Tensor, clean_true: torch.Tensor) -> None:
        """Images wrong on the clean image are fooled before any search: nothing is spent on them.

        The clean results stand for the space's identity point wherever a search meets it: the same
        image evaluated again in another batch could differ in the last bits and flip a near tie.
        """
        self.clean, self.clean_true = clean, clean_true
        self.fooling_rank[clean.long() != self.labels.long()] = -1.0

    def at(self, rows: torch.Tensor, points: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict` for images `rows` at `points` (parameters `values`); the identity point from the clean pass."""
        identity = self.space.identity_index
        same = points == identity if identity is not None else torch.zeros_like(points, dtype=torch.bool)
        if not bool(same.any()):
            return self.predict(rows, values)
        classes, true = self.clean[rows].clone(), self.clean_true[rows].clone()
        moved = ~same
        if bool(moved.any()):
            classes[moved], true[moved] = self.predict(rows[moved], values if values.dim() == 1 else values[moved])
        return classes, true

    def predict(self, rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classes and true-class probabilities of images `rows` at parameters `values` ((len, D) or (D,))."""
        device = self.prepared.device
        batch = perturb_at(self.images[rows.to(device)], self.space, values, seed=self.seed, indices=rows)
        with torch.inference_mode():
            logits = self.prepared(batch)
        check_logits(logits, len(rows), self.name)
        probabilities = logits.float().softmax(1)
        classes = probabilities.argmax(1).masked_fill(~torch.isfinite(logits).all(1), NO_PREDICTION)
        true = probabilities.gather(1, self.labels[rows].to(device).long().unsqueeze(1)).squeeze(1)
        self.forward_passes += len(rows)
        return classes.to(torch.uint8).cpu(), true.float().nan_to_num(0.0).cpu()

    def score(self, rows: torch.Tensor, points: torch.Tensor, ranks: torch.Tensor, uniform: bool) -> torch.Tensor:
        """Evaluate images `rows` at `points` (`ranks`: their places in the search order); their classes."""
        values = self.space.points[points[0]] if uniform else self.space.points[points]
        classes, true = self.at(rows, points, values)
        wrong = classes.long() != self.labels[rows].long()
        self.keep_first_fooling(rows[wrong], points[wrong], ranks[wrong].double(), classes[wrong])
        self.keep_worst(rows, points, true)
        return classes

    def keep_first_fooling(
        self, rows: torch.Tensor, points: torch.Tensor, ranks: torch.Tensor, classes: torch.Tensor
    ) -> None:
        """Record fooling evaluations: each image keeps the one of lowest rank it has seen."""
        if not len(rows):
            return
        best = torch.full_like(self.fooling_rank, math.inf).scatter_reduce(0, rows, ranks, reduce="amin")
        better = (ranks == best[rows]) & (ranks < self.fooling_rank[rows])
        self.fooling_rank[rows[better]] = ranks[better]
        self.fooling_point[rows[better]] = points[better]
        self.fooling_prediction[rows[better]] = classes[better]

    def keep_worst(self, rows: torch.Tensor, points: torch.Tensor, true: torch.Tensor) -> None:
        """Record each image's evaluated point of lowest true-class probability."""
        lowest = torch.full_like(self.worst_probability, math.inf).scatter_reduce(0, rows, true, reduce="amin")
        hit = (true == lowest[rows]) & (true < self.worst_probability[rows])
        self.worst_probability[rows[hit]] = true[hit]
        self.worst_point[rows[hit]] = points[hit]


def search_space(
    prepared: PreparedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    space: Space,
    search: Search,
    *,
    name: str,
    seed: int = 0,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> AdversaryOutputs:
    """Search `space` for each image's worst case as `search` says; per-image observations (see the module)."""
    labels = labels.cpu()
    scorer = _Scorer(prepared, images, labels, space, name=name, seed=seed)
    everyone = torch.arange(len(labels))
    clean_values = space.identities if space.identity_index is None else space.points[space.identity_index]
    clean, clean_true = _batched(scorer.predict, everyone, clean_values, batch_size)
    scorer.fooled_clean(clean, clean_true)
    k = search.k if search.kind == "worst_of_k" else 1
    drawn = draws(space, len(labels), k, seed, everyone)
    empty = torch.zeros(0, dtype=torch.int64)
    sample, sample_predictions = empty, torch.zeros(0, space.size, dtype=torch.uint8)
    rank = None  # a draw's rank: its round, or for the grid the point's place in the grid's order
    if search.kind == "grid":
        sample, sample_predictions, rank = _grid_sample(scorer, search, seed, batch_size, show_progress)
    random_prediction = _draw_rounds(scorer, drawn, rank, batch_size)
    found = torch.zeros(len(labels), 0)
    if search.kind == "grid":
        _grid_rest(scorer, sample, rank, batch_size, show_progress)
    elif search.kind == "gradient":
        found = _gradient(scorer, search, drawn[:, 0], batch_size)
    return AdversaryOutputs(
        clean_prediction=clean,
        random_point=drawn[:, 0].int(),
        random_prediction=random_prediction,
        fooling_point=scorer.fooling_point.int(),
        fooling_prediction=scorer.fooling_prediction,
        worst_point=scorer.worst_point.int(),
        worst_true_probability=scorer.worst_probability,
        sample_indices=sample,
        sample_predictions=sample_predictions,
        found_values=found,
        forward_passes=scorer.forward_passes,
    )


def _batched(predict, rows: torch.Tensor, values: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` over `rows` in batches; `values` (D,) for all rows or (len(rows), D) per row."""
    parts = [
        predict(rows[i : i + batch_size], values if values.dim() == 1 else values[i : i + batch_size])
        for i in range(0, len(rows), batch_size)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _draw_rounds(scorer: _Scorer, drawn: torch.Tensor, rank: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """Evaluate each image's draws in turn; returns the classes at the first draw (the random case).

    Every image takes its first draw; round j takes draw j of the images nothing has fooled yet.
    """
    count = len(scorer.labels)
    random_prediction = torch.full((count,), NO_PREDICTION, dtype=torch.uint8)
    for round_index in range(drawn.shape[1]):
        rows = torch.arange(count) if round_index == 0 else scorer.standing().nonzero().flatten()
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            points = drawn[chunk, round_index]
            ranks = torch.full_like(points, round_index) if rank is None else rank[points]
            classes = scorer.score(chunk, points, ranks, uniform=False)
            if round_index == 0:
                random_prediction[chunk] = classes
    return random_prediction


def _grid_sample(
    scorer: _Scorer, search: Search, seed: int, batch_size: int, show_progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sample at every point: its classes (S, P), and every point's rank in the grid's search order."""
    space, labels = scorer.space, scorer.labels
    generator = torch.Generator().manual_seed(derive_key(seed, "adversary-sample") & 0x7FFFFFFF)
    sample = torch.randperm(len(labels), generator=generator)[: min(search.images, len(labels))].sort().values
    classes = torch.empty(len(sample), space.size, dtype=torch.uint8)
    true = torch.empty(len(sample), space.size, dtype=torch.float32)
    with progress_bar(space.size, f"grid sample {scorer.name}", unit="point", enabled=show_progress) as bar:
        for point in range(space.size):
            classes[:, point], true[:, point] = _batched(
                lambda rows, values, p=point: scorer.at(rows, torch.full_like(rows, p), values),
                sample,
                space.points[point],
                batch_size,
            )
            bar.update(1)
    order = _search_order(space, classes, labels[sample])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    points = torch.arange(space.size).expand(len(sample), -1)
    rows = sample.unsqueeze(1).expand(-1, space.size)
    wrong = classes.long() != labels[sample].long().unsqueeze(1)
    scorer.keep_first_fooling(rows[wrong], points[wrong], rank[points[wrong]].double(), classes[wrong])
    scorer.keep_worst(rows.reshape(-1), points.reshape(-1), true.reshape(-1))
    return sample, classes, rank


def _grid_rest(scorer: _Scorer, sample: torch.Tensor, rank: torch.Tensor, batch_size: int, show_progress: bool):
    """Every image outside the sample, point by point in the grid's order, each dropped once a point ranked before
    the current one fools it: the first fooling point found is then its first in the order."""
    space = scorer.space
    order = torch.argsort(rank)
    rest = torch.ones(len(scorer.labels), dtype=torch.bool)
    rest[sample] = False
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    with progress_bar(space.size, f"grid {scorer.name}", unit="point", enabled=show_progress) as bar:
        for place, point in enumerate(order.tolist()):
            rows = (rest & (scorer.fooling_rank > place)).nonzero().flatten()
            bar.update(1)
            if len(rows):
                pending.append((rows, torch.full_like(rows, point)))
            if sum(len(r) for r, _ in pending) >= batch_size:
                _flush(scorer, pending, rank, batch_size)
        _flush(scorer, pending, rank, batch_size)


def _flush(scorer: _Scorer, pending: list[tuple[torch.Tensor, torch.Tensor]], rank: torch.Tensor, size: int) -> None:
    """Evaluate the pending (images, point) pairs in batches of `size`, then forget them."""
    if not pending:
        return
    rows = torch.cat([r for r, _ in pending])
    points = torch.cat([p for _, p in pending])
    pending.clear()
    for first in range(0, len(rows), size):
        chunk = slice(first, first + size)
        uniform = bool((points[chunk] == points[first]).all())
        scorer.score(rows[chunk], points[chunk], rank[points[chunk]], uniform)


def budget_level(space: Space, levels: int = BUDGET_LEVELS) -> torch.Tensor:
    """(P,) each point's budget level: the smallest k in 0..levels whose sub-grid (radius <= k / levels) holds it."""
    return torch.ceil(space.radius * levels - 1e-9).clamp_min(0).long()


def _search_order(space: Space, sample_classes: torch.Tensor, sample_labels: torch.Tensor) -> torch.Tensor:
    """Points by budget level, and within one level the ones that fooled most of the sample first.

    An image fooled at level k is then known to stand at every smaller budget (their points were
    all tried) and needs no more points: the curve at the budget levels comes from one pass.
    """
    fooled = (sample_classes.long() != sample_labels.long().unsqueeze(1)).double().mean(0)
    by_rate = torch.argsort(-fooled, stable=True)
    return by_rate[torch.argsort(budget_level(space)[by_rate], stable=True)]


def _gradient(scorer: _Scorer, search: Search, start: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Signed-gradient ascent of the true class's loss over the continuous parameters; (N, D) the values found.

    Restart r starts from each standing image's draw r+1 (draw 0, the random case, was already
    evaluated); each restart ends with a check through the suite's kernels (`perturb_at`), and the
    first that fools an image is kept with its values.
    """
    space, labels = scorer.space, scorer.labels
    low = torch.stack([g.min() for g in space.grids]).float()
    high = torch.stack([g.max() for g in space.grids]).float()
    found = space.points[start].float()
    starts = draws(space, len(labels), search.restarts + 1, scorer.seed, torch.arange(len(labels)))
    for restart in range(search.restarts):
        rows = scorer.standing().nonzero().flatten()
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            values = _ascend(scorer, chunk, space.points[starts[chunk, restart + 1]].float(), low, high, search.steps)
            classes, _ = scorer.predict(chunk, values.double())
            wrong = classes.long() != labels[chunk].long()
            found[chunk] = values
            # off the grid: the point is -1 - restart, the values are in `found`
            marker = torch.full((len(chunk),), -2 - restart, dtype=torch.int64)
            scorer.keep_first_fooling(
                chunk[wrong], marker[wrong], (marker[wrong] * 0 + 1 + restart).double(), classes[wrong]
            )
    return found


def _ascend(
    scorer: _Scorer, rows: torch.Tensor, values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, steps: int
) -> torch.Tensor:
    """`steps` signed-gradient steps on the loss of the true class, projected into [low, high]."""
    device = scorer.prepared.device
    images = scorer.images[rows.to(device)].float()
    labels = scorer.labels[rows].to(device).long()
    step = ((high - low) / max(steps, 1) * 2.5).to(device)
    values, low, high = values.to(device), low.to(device), high.to(device)
    module = scorer.prepared.module
    for _ in range(steps):
        values = values.detach().requires_grad_(True)
        with torch.enable_grad():
            perturbed = _differentiable(images, scorer.space, values)
            logits = module(perturbed.contiguous(memory_format=scorer.prepared.memory_format))
            loss = F.cross_entropy(logits.float(), labels)
            (gradient,) = torch.autograd.grad(loss, values)
        values = torch.minimum(torch.maximum(values + step * gradient.sign(), low), high)
        scorer.forward_passes += 2 * len(rows)  # a forward and a backward
    return values.detach().cpu()


def _differentiable(images: torch.Tensor, space: Space, values: torch.Tensor) -> torch.Tensor:
    """`perturb_at` for the built-in axes, written so gradients reach the parameters (float32 warp, light)."""
    columns = dict(zip(space.dims, values.unbind(1), strict=True))
    keywords = {}
    for entry in space.entries:
        if entry.warp:
            keywords.update({k: columns[d] for k, d in zip(entry.warp, entry.dims, strict=True)})
    out = images
    if keywords:
        height, width = images.shape[-2:]
        matrices = affine_matrices(height, width, **{k: v.double() for k, v in keywords.items()})
        inverse = torch.linalg.inv(matrices)
        (x_scale, x_offset), (y_scale, y_offset) = to_normalised(width), to_normalised(height)
        normalise = torch.tensor(
            [[x_scale, 0.0, x_offset], [0.0, y_scale, y_offset], [0.0, 0.0, 1.0]],
            dtype=torch.float64,
            device=values.device,
        )
        theta = (normalise @ inverse @ torch.linalg.inv(normalise))[:, :2, :].float()
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    for entry in space.entries:
        if entry.light is not None:
            amount = columns[entry.name].view(-1, 1, 1, 1).to(out.dtype)
            if entry.name == "brightness":
                out = (out + amount).clamp(0, 1)
            elif entry.name == "contrast":
                mean = out.mean(dim=(-3, -2, -1), keepdim=True)
                out = ((out - mean) * amount + mean).clamp(0, 1)
            elif entry.name == "gamma":
                out = out.clamp(1e-6, 1).pow(amount)
            elif entry.name == "exposure":
                out = (out * amount).clamp(0, 1)
    return out


def adversary_step(
    prepared: PreparedModel, images: torch.Tensor, labels: torch.Tensor, space: Space, name: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One step of a search as `search_space` runs it, for timing: (rows, points) -> the classes there."""
    scorer = _Scorer(prepared, images, labels, space, name=name, seed=0)
    scorer.fooled_clean(labels.to(torch.uint8), torch.ones(len(labels)))
    return lambda rows, points: scorer.score(rows, points, torch.zeros_like(points), uniform=False)
