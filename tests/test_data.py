from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_fmnist import data
from robustbench_fmnist.data import find_data_dir, load_fashion_mnist
from robustbench_fmnist.errors import DataError
from tests.conftest import synthetic_split, write_dataset, write_idx


def test_loads_both_splits_as_uint8_tensors(synthetic_dir: Path) -> None:
    fm = load_fashion_mnist(synthetic_dir, verify=False)
    images, labels = synthetic_split(400, seed=0)
    assert fm.train.images.dtype == torch.uint8 and fm.train.images.shape == (400, 28, 28)
    assert fm.train.labels.dtype == torch.int64
    assert torch.equal(fm.train.images, torch.from_numpy(images))
    assert torch.equal(fm.train.labels, torch.from_numpy(labels.astype(np.int64)))
    assert len(fm.test) == 200
    assert fm.source == synthetic_dir and len(fm.checksum) == 64 and not fm.verified


def test_uncompressed_idx_files_are_read_too(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "raw", compress=False)
    assert len(load_fashion_mnist(folder, verify=False).train) == 400


def test_checksum_changes_with_the_contents(tmp_path: Path) -> None:
    a = load_fashion_mnist(write_dataset(tmp_path / "a"), verify=False).checksum
    b = load_fashion_mnist(write_dataset(tmp_path / "b", train=300), verify=False).checksum
    assert a != b


def test_truncated_gzip_names_the_file(synthetic_dir: Path) -> None:
    target = synthetic_dir / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:500])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is truncated or corrupt.*apt-get install"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_corrupt_gzip_names_the_file(synthetic_dir: Path) -> None:
    target = synthetic_dir / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[20:40] = b"\xff" * 20
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz is truncated or corrupt"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_data_shorter_than_header_promises_is_rejected(synthetic_dir: Path) -> None:
    target = synthetic_dir / "train-labels-idx1-ubyte.gz"
    payload = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(payload[:-10]))
    with pytest.raises(DataError, match=r"header promises 400: the file is truncated"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_wrong_magic_is_rejected(synthetic_dir: Path) -> None:
    # a labels file where an images file belongs
    images = synthetic_dir / "train-images-idx3-ubyte.gz"
    images.write_bytes((synthetic_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match="not an IDX file of 3-d unsigned bytes"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_labels_outside_0_to_9_are_rejected(synthetic_dir: Path) -> None:
    write_idx(synthetic_dir / "t10k-labels-idx1-ubyte", np.full(200, 12, dtype=np.uint8))
    with pytest.raises(DataError, match=r"label 12 is outside 0\.\.9"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_image_and_label_counts_must_agree(synthetic_dir: Path) -> None:
    write_idx(synthetic_dir / "t10k-labels-idx1-ubyte", np.zeros(150, dtype=np.uint8))
    with pytest.raises(DataError, match="200 images but 150 labels"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_wrong_image_size_is_rejected(synthetic_dir: Path) -> None:
    write_idx(synthetic_dir / "t10k-images-idx3-ubyte", np.zeros((200, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="expected 28x28"):
        load_fashion_mnist(synthetic_dir, verify=False)


def test_verify_rejects_wrong_counts(synthetic_dir: Path) -> None:
    with pytest.raises(DataError, match="400 images, Fashion-MNIST has 60000"):
        load_fashion_mnist(synthetic_dir)


def test_verify_rejects_contents_that_differ_from_the_published_files(
    synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # counts made to match, so only the SHA-256 of the decompressed bytes can catch it
    monkeypatch.setitem(data.SPLITS, "train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 400))
    monkeypatch.setitem(data.SPLITS, "test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 200))
    with pytest.raises(DataError, match="does not hold the published Fashion-MNIST contents"):
        load_fashion_mnist(synthetic_dir)


# --- lookup order: explicit dir, then $RBFM_DATA_DIR, then Debian's folder, then the cache ---


@pytest.fixture
def lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    places = {name: tmp_path / name for name in ("explicit", "env", "debian", "cache_root")}
    monkeypatch.setattr(data, "DEBIAN_DIR", places["debian"])
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(places["cache_root"]))
    places["cache"] = places["cache_root"] / "fashion-mnist"
    return places


def test_explicit_dir_wins_over_everything(lookup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("explicit", "env", "debian", "cache"):
        write_dataset(lookup[name])
    monkeypatch.setenv(data.ENV_DATA_DIR, str(lookup["env"]))
    assert find_data_dir(lookup["explicit"]) == lookup["explicit"]
    assert find_data_dir() == lookup["env"]


def test_debian_folder_comes_before_the_cache(lookup: dict[str, Path]) -> None:
    write_dataset(lookup["cache"])
    assert find_data_dir() == lookup["cache"]
    write_dataset(lookup["debian"])
    assert find_data_dir() == lookup["debian"]


def test_a_named_folder_without_the_files_is_an_error_not_a_fallthrough(
    lookup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dataset(lookup["debian"])
    lookup["explicit"].mkdir()
    with pytest.raises(DataError, match=r"the configured data dir .*explicit lacks train-images-idx3-ubyte"):
        find_data_dir(lookup["explicit"])
    monkeypatch.setenv(data.ENV_DATA_DIR, str(lookup["env"]))
    with pytest.raises(DataError, match=r"\$RBFM_DATA_DIR"):
        find_data_dir()


def test_nothing_found_tells_how_to_get_the_data(lookup: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*--download"):
        find_data_dir()


def test_download_only_when_allowed_and_nothing_found(lookup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_download(folder: Path) -> Path:
        calls.append(folder)
        return write_dataset(folder)

    monkeypatch.setattr(data, "download_fashion_mnist", fake_download)
    write_dataset(lookup["debian"])
    assert find_data_dir(download=True) == lookup["debian"] and calls == []
    monkeypatch.setattr(data, "DEBIAN_DIR", lookup["explicit"])  # now nothing is installed
    assert find_data_dir(download=True) == lookup["cache"] and calls == [lookup["cache"]]
