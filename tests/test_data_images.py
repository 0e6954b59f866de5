"""Image sources: Fashion-MNIST IDX files (real ones when installed) and the bundled digits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mycroft.data import Digits, FashionMNIST, default_source
from mycroft.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, ENV_VAR, TEST_ID_OFFSET
from mycroft.errors import DataError

needs_fashion = pytest.mark.skipif(
    not FashionMNIST.available(),
    reason=f"Fashion-MNIST IDX files not found in ${ENV_VAR} or {DEFAULT_ROOT} "
    "(install the dataset-fashion-mnist package)",
)


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(payload)


def write_split(root: Path, stem: str, n: int, gz: bool = True) -> None:
    """A small well-formed split: n images, n labels."""
    rng = np.random.default_rng(0)
    images = idx_bytes(0x803, (n, 28, 28), rng.integers(0, 256, n * 784, dtype=np.uint8))
    labels = idx_bytes(0x801, (n,), rng.integers(0, 10, n, dtype=np.uint8))
    for kind, data in (("images-idx3", images), ("labels-idx1", labels)):
        path = root / f"{stem}-{kind}-ubyte"
        if gz:
            with gzip.open(f"{path}.gz", "wb") as fh:
                fh.write(data)
        else:
            path.write_bytes(data)


@needs_fashion
def test_fashion_mnist_real_files() -> None:
    src = FashionMNIST()
    test = src.load("test")
    assert test.features.shape == (10_000, 1, 28, 28) and test.features.dtype == np.float32
    assert 0.0 <= test.features.min() and test.features.max() <= 1.0
    assert test.labels.dtype == np.int64 and np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names == CLASS_NAMES and test.class_names[6] == "Shirt"
    assert test.row_ids[0] == TEST_ID_OFFSET and len(np.unique(test.row_ids)) == 10_000
    train = src.load("train")
    assert len(train) == 60_000 and train.row_ids.tolist() == list(range(60_000))
    assert not np.intersect1d(train.row_ids, test.row_ids).size
    again = src.load("test")
    assert np.array_equal(again.features, test.features)


@needs_fashion
def test_fashion_mnist_truncated_real_file(tmp_path: Path) -> None:
    """The real test files, with the labels cut short, are refused naming that file."""
    root = FashionMNIST().root
    for kind in ("images-idx3", "labels-idx1"):
        name = f"t10k-{kind}-ubyte"
        src = root / f"{name}.gz" if (root / f"{name}.gz").exists() else root / name
        data = src.read_bytes()
        if kind == "labels-idx1":
            data = data[: len(data) // 2]
        (tmp_path / src.name).write_bytes(data)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte"):
        FashionMNIST(tmp_path).load("test")


def test_fashion_mnist_small_files_read_then_size_checked(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 5, gz=False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: 5 images, the test split has"):
        FashionMNIST(tmp_path).load("test")


def test_fashion_mnist_wrong_magic(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 3)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(idx_bytes(0x803, (3,), b"\x00\x01\x02"))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: wrong IDX magic"):
        FashionMNIST(tmp_path).load("test")


def test_fashion_mnist_size_mismatch(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 3)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(idx_bytes(0x803, (3, 28, 28), bytes(784 * 2)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: header says dims"):
        FashionMNIST(tmp_path).load("test")


def test_fashion_mnist_truncated_gz(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 50)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: cannot read IDX"):
        FashionMNIST(tmp_path).load("test")


def test_fashion_mnist_not_gzip(tmp_path: Path) -> None:
    write_split(tmp_path, "t10k", 3)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        FashionMNIST(tmp_path).load("test")


def test_fashion_mnist_missing_file_and_split(tmp_path: Path) -> None:
    assert not FashionMNIST.available(tmp_path)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*not found"):
        FashionMNIST(tmp_path).load("test")
    with pytest.raises(DataError, match="no split 'val'"):
        FashionMNIST(tmp_path).load("val")


def test_fashion_mnist_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for stem in ("train", "t10k"):
        write_split(tmp_path, stem, 2)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert FashionMNIST().root == tmp_path and FashionMNIST.available()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    assert not FashionMNIST.available()
    assert isinstance(default_source(), Digits)


def test_digits_splits() -> None:
    train, test = Digits().load("train"), Digits().load("test")
    assert train.features.shape[1:] == (1, 8, 8) and train.features.dtype == np.float32
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert 0.0 <= train.features.min() and train.features.max() == 1.0
    assert not np.intersect1d(train.row_ids, test.row_ids).size
    assert np.bincount(test.labels).min() >= 35  # stratified
    again = Digits().load("test")
    assert np.array_equal(again.row_ids, test.row_ids)
    assert np.array_equal(again.features, test.features)
    with pytest.raises(DataError, match="digits: no split"):
        Digits().load("validation")
