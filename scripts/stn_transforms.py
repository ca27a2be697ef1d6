"""What a report's spatial transformers do to turned, shifted and rescaled images: the transform each predicts.

For every model of the experiment with a spatial transformer front end (models/stn.py), each seed's
weights are loaded from the checkpoint its report's run.json names (and checked against the
weights_sha256 recorded there), the first test images are moved by the suite's own kernels to one
point of an axis at a time, and the affine transform the transformer predicts for each image is read:

- rotation: how many degrees of the turn it turns back (the angle of the rotation nearest its
  linear part), 100 % when it undoes the turn exactly;
- scale: the scale factor it samples at (the square root of the linear part's determinant; an
  object shrunk to 0.7 is undone at 0.7);
- translate: how many pixels of the shift it shifts back, along x and y averaged (the suite's
  translate axis moves an image by the same number of pixels along both, diagonally).

Per seed the median over images; across seeds the mean with its 95 % t interval. The experiment is
read from the run.json; one whose models name a `factory` is refused (a received report is data:
nothing named in it is imported).

Run: python scripts/stn_transforms.py reports/viewpoint_longer_training [--images 2000] [--out F.csv]
(the report's checkpoints must be in the cache its run.json names: run its experiment first)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch

from robustbench_fmnist.config import config_from_record
from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.models.stn import SpatialTransformer
from robustbench_fmnist.perturbations.space import Space, perturb_at
from robustbench_fmnist.statistics import seed_half_width
from robustbench_fmnist.training.checkpoints import load_checkpoint_into, weights_sha256
from robustbench_fmnist.training.resolution import resolve
from robustbench_fmnist.training.weights import seeded_model

# held out beyond ±30 degrees, ±3 px and scale 1 in the worst-of-k trainings' space; each axis is
# also read at its identity, the images as they are, which each share is counted from
POINTS = {
    "rotation": [-90, -60, -45, -30, -15, 15, 30, 45, 60, 90],
    "translate": [-6, -3, 3, 6],
    "scale": [0.6, 0.8, 1.25],
}
# the ideal, undone exactly: rotation turned back by the turn, translate shifted back by the
# shift, scale sampled at the scale (what models/stn.py's affine_grid convention makes of each)


def undone(theta: torch.Tensor, axis: str) -> torch.Tensor:
    """Per image, how much of a move along `axis` the affine `theta` (N, 2, 3) undoes, in the axis's unit."""
    linear = theta[:, :, :2].double()
    if axis == "rotation":
        # the nearest rotation to a 2x2 matrix has this angle; a turn of +a is undone by -a here
        turned = torch.atan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1])
        return -torch.rad2deg(turned)
    if axis == "scale":
        return torch.linalg.det(linear).abs().sqrt()
    if axis == "translate":
        return theta[:, :, 2].double().mean(1) * 14  # affine_grid's unit is half the 28-pixel width
    raise ValueError(f"no reading of the transformer along {axis!r}: use one of {sorted(POINTS)}")


def share(axis: str, applied: float, reading: float, unmoved: float) -> float:
    """The share of the move undone, counted from what the transformer reads for the unmoved images: 1 when
    the transform follows the move exactly, 0 when it ignores it (scale on the log scale). NaN at the identity."""
    if axis == "scale":
        return math.log(reading / unmoved) / math.log(applied) if applied != 1 else math.nan
    return (reading - unmoved) / applied if applied != 0 else math.nan


def identity(axis: str) -> float:
    """The point of `axis` that leaves an image as it is (the suite's own)."""
    return Space.of({axis: [1, 1, 1]}).entries[0].identity


def moved(images: torch.Tensor, axis: str, value: float) -> torch.Tensor:
    """`images` moved to `value` along `axis` by the suite's own kernels (x and y alike for translate)."""
    space = Space.of({axis: [value, value, 1]})
    return perturb_at(images, space, torch.full((len(space.dims),), float(value)))


def transformers(report: Path) -> list[tuple[str, int, SpatialTransformer]]:
    """(model name, seed, its spatial transformer) for every model of the report that has one."""
    run = json.loads((report / "run.json").read_text())
    source = str(report / "run.json")
    recipes = {m["name"]: m["recipe"] for m in run.get("models") or [] if m.get("recipe")}
    config = config_from_record(run["config"], {}, source, recipes)
    factories = [model.factory for model in config.models if model.factory]
    if factories:
        raise SystemExit(f"{source}: its models name code to run ({factories[0]}); this reads registered models only")
    specs = {
        spec.name: spec
        for spec in resolve(config)
        if any(isinstance(module, SpatialTransformer) for module in spec.build().modules())
    }
    found = []
    for row in run["models"]:
        spec = specs.get(row["name"])
        if spec is None:
            continue
        path, model = Path(row["checkpoint"]), seeded_model(spec, row["seed"])
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run the report's experiment to train it (or give its cache)")
        problem = load_checkpoint_into(path, model)[1]
        if problem is not None:
            raise SystemExit(f"{path}: unusable ({problem[:200]}); run the report's experiment to train it again")
        if weights_sha256(model) != row["weights_sha256"]:
            raise SystemExit(f"{path}: not the weights {source} records for {row['name']} seed {row['seed']}")
        stn = next(module for module in model.modules() if isinstance(module, SpatialTransformer))
        found.append((row["name"], row["seed"], stn.eval()))
    return found


def readings(found: list[tuple[str, int, SpatialTransformer]], images: torch.Tensor) -> pd.DataFrame:
    """One row per model, seed, axis and point: the median over images of what the transformer undoes, and the
    share of the move that is, counted from the same seed's reading of the unmoved images."""
    rows = []
    with torch.inference_mode():
        for axis, values in POINTS.items():
            unmoved: dict[tuple[str, int], float] = {}
            for value in [identity(axis), *values]:  # the identity's reading is each seed's unmoved one
                shown = moved(images, axis, value)
                for name, seed, stn in found:
                    median = float(undone(stn.theta(shown), axis).median())
                    unmoved.setdefault((name, seed), median)
                    rows.append({"model": name, "seed": seed, "axis": axis, "applied": value, "undone": median,
                                 "share": share(axis, value, median, unmoved[name, seed])})  # fmt: skip
    return pd.DataFrame(rows)


def across_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per model, axis and point: the mean over seeds of what is undone and of its share, with 95 % t intervals."""
    table = (
        per_seed.groupby(["model", "axis", "applied"], sort=False)
        .agg(seeds=("seed", "count"), undone=("undone", "mean"), undone_sd=("undone", "std"),
             share=("share", "mean"), share_sd=("share", "std"))
        .reset_index()
    )  # fmt: skip
    for column in ("undone", "share"):
        half_width = seed_half_width(table.pop(f"{column}_sd"), table["seeds"])
        table[f"{column}_low"], table[f"{column}_high"] = table[column] - half_width, table[column] + half_width
    return table


def main(argv: list[str] | None = None) -> int:
    """The command line: print the table, optionally write the per-seed readings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report folder whose run.json names the checkpoints")
    parser.add_argument("--images", type=int, default=2000, help="the first N test images (default 2000)")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST's folder (default: where `run` finds it)")
    parser.add_argument("--out", type=Path, help="also write the per-seed readings here as CSV")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images {args.images}: give at least 1 test image")
    if not (args.report / "run.json").is_file():
        print(f"{args.report}: no run.json; give a report folder", file=sys.stderr)
        return 2
    found = transformers(args.report)
    if not found:
        print(f"{args.report}: no model with a spatial transformer", file=sys.stderr)
        return 2
    test_images = load_fashion_mnist(args.data_dir, verify=args.data_dir is None).test.images
    images = to_float_images(test_images[: args.images], torch.device("cpu"))
    per_seed = readings(found, images)
    if args.out:
        per_seed.to_csv(args.out, index=False)
    table = across_seeds(per_seed)
    for (model, axis), part in table.groupby(["model", "axis"], sort=False):
        print(f"\n{model}, {axis} ({part['seeds'].iloc[0]} seeds, median of {len(images):,} images each):")
        for row in part.itertuples():
            low, high = 100 * row.share_low, 100 * row.share_high
            followed = "" if math.isnan(row.share) else f"; follows {100 * row.share:.0f} % ({low:.0f} to {high:.0f})"
            interval = f"({row.undone_low:.2f} to {row.undone_high:.2f})"
            print(f"  applied {row.applied:>6g}: undone {row.undone:.2f} {interval}{followed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
