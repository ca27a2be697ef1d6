"""Write a Fashion-MNIST subset (the first N training images, the whole test set) as the four IDX .gz files.

For a machine the full training file cannot travel to (the GPU check's device machine takes at
most 64 MiB with the repository): `scripts/gpu-check.sh` reads it with DATA_DIR=<folder>, which
loads it unverified (its checksum is not the published one, so its cache keys are its own).
    python scripts/data_subset.py .gpu/data --train-images 15000
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from robustbench_fmnist.data import load_fashion_mnist


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as a gzipped IDX file (magic 0x08 = unsigned byte, then the dimensions)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes(), mtime=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train-images", type=int, default=15_000)
    args = parser.parse_args()
    data = load_fashion_mnist()
    args.folder.mkdir(parents=True, exist_ok=True)
    count = args.train_images
    for stem, array in (
        ("train-images-idx3-ubyte", data.train.images[:count]),
        ("train-labels-idx1-ubyte", data.train.labels[:count]),
        ("t10k-images-idx3-ubyte", data.test.images),
        ("t10k-labels-idx1-ubyte", data.test.labels),
    ):
        write_idx(args.folder / f"{stem}.gz", array.numpy())
    print(f"{args.folder}: {count} training and {len(data.test)} test images")


if __name__ == "__main__":
    main()
