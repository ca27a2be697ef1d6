"""Fashion-MNIST from its four IDX files into one uint8 tensor per split.

Lookup order: an explicit folder (YAML `data.dir` or `--data-dir`), then $RBFM_DATA_DIR,
then Debian's package location, then the user cache; a download only when nothing was
found and the caller allowed it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustbench_fmnist.errors import DataError

log = logging.getLogger(__name__)

ENV_DATA_DIR = "RBFM_DATA_DIR"
ENV_CACHE_DIR = "RBFM_CACHE_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# (images file, labels file, number of images) per split
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
# SHA-256 of the *decompressed* files: distributors recompress the .gz files (Debian does),
# so only the contents are stable. They match the publisher's archives.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
IDX_MAGIC = {1: 2049, 3: 2051}  # labels, images (unsigned byte data)
HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist), set "
    f"{ENV_DATA_DIR} to a folder holding the four .gz files, or allow a download (--download)"
)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class FashionMNIST:
    train: Split
    test: Split
    source: Path
    checksum: str  # digest over the four decompressed files' SHA-256s
    verified: bool  # whether those matched the published contents


def user_cache_dir() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustbench_fmnist"


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing_files(folder: Path) -> list[str]:
    return [stem for stem in SHA256 if _file_in(folder, stem) is None]


def find_data_dir(data_dir: str | Path | None = None, *, download: bool = False) -> Path:
    """The folder to read the four IDX files from (downloading into the cache if allowed)."""
    explicit = [(Path(data_dir), "the configured data dir")] if data_dir else []
    if os.environ.get(ENV_DATA_DIR):
        explicit.append((Path(os.environ[ENV_DATA_DIR]), f"${ENV_DATA_DIR}"))
    for folder, origin in explicit:
        # a folder the user named must hold the data; falling through would hide a typo
        missing = _missing_files(folder)
        if missing:
            raise DataError(f"{origin} {folder} lacks {missing[0]}(.gz); {HOW_TO_GET}")
        return folder
    cache = user_cache_dir() / "fashion-mnist"
    for folder in (DEBIAN_DIR, cache):
        if not _missing_files(folder):
            return folder
    if download:
        return download_fashion_mnist(cache)
    raise DataError(f"Fashion-MNIST not found in {DEBIAN_DIR} or {cache}; {HOW_TO_GET}")


def download_fashion_mnist(folder: Path) -> Path:
    """Fetch the four files from the mirrors torchvision knows, checking their MD5."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST
    from torchvision.datasets.utils import download_url

    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in TorchvisionFashionMNIST.resources:
        if (folder / filename).is_file():
            continue
        errors = []
        for mirror in TorchvisionFashionMNIST.mirrors:
            try:
                log.info("downloading %s%s", mirror, filename)
                download_url(mirror + filename, str(folder), filename=filename, md5=md5)
                break
            except Exception as exc:
                (folder / filename).unlink(missing_ok=True)
                errors.append(f"{mirror}: {exc}")
        else:
            raise DataError(f"could not download {filename} ({'; '.join(errors)}); {HOW_TO_GET}")
    return folder


def read_idx(path: Path, *, ndim: int) -> tuple[np.ndarray, str]:
    """Read one IDX file (gzipped or not) of unsigned bytes; return the array and its SHA-256."""
    try:
        with path.open("rb") as fh:
            raw = fh.read()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is truncated or corrupt ({exc}); {HOW_TO_GET}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its header; {HOW_TO_GET}")
    magic, *dims = np.frombuffer(data[:header], dtype=">u4").tolist()
    if magic != IDX_MAGIC[ndim]:
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic {magic}); {HOW_TO_GET}")
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes but its header promises {expected}: "
            f"the file is truncated or corrupt; {HOW_TO_GET}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return array, hashlib.sha256(data).hexdigest()


def _load_split(folder: Path, split: str, verify: bool) -> tuple[Split, dict[str, str]]:
    images_stem, labels_stem, count = SPLITS[split]
    images, images_sha = read_idx(_file_in(folder, images_stem) or folder / images_stem, ndim=3)
    labels, labels_sha = read_idx(_file_in(folder, labels_stem) or folder / labels_stem, ndim=1)
    where = f"{folder} ({split} split)"
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{where}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{where}: no images; nothing could be trained or evaluated")
    if verify and len(images) != count:
        raise DataError(f"{where}: {len(images)} images, Fashion-MNIST has {count}; {HOW_TO_GET}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{where}: label {int(labels.max())} is outside 0..9; the labels file is corrupt")
    digests = {images_stem: images_sha, labels_stem: labels_sha}
    if verify:
        for stem, digest in digests.items():
            if digest != SHA256[stem]:
                raise DataError(
                    f"{_file_in(folder, stem)} does not hold the published Fashion-MNIST contents "
                    f"(SHA-256 of its decompressed bytes differs); replace it: {HOW_TO_GET}"
                )
    split_data = Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return split_data, digests


def load_fashion_mnist(
    data_dir: str | Path | None = None, *, download: bool = False, verify: bool = True
) -> FashionMNIST:
    """Both splits as CPU tensors. `verify=False` accepts other data in the same format."""
    folder = find_data_dir(data_dir, download=download)
    train, train_digests = _load_split(folder, "train", verify)
    test, test_digests = _load_split(folder, "test", verify)
    digests = {**train_digests, **test_digests}
    checksum = hashlib.sha256("".join(digests[k] for k in sorted(digests)).encode()).hexdigest()
    log.info("Fashion-MNIST from %s (%d train, %d test)", folder, len(train), len(test))
    return FashionMNIST(train=train, test=test, source=folder, checksum=checksum, verified=verify)


def to_float_images(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1] on `device`."""
    return images.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
