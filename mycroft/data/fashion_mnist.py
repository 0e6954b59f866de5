"""Fashion-MNIST from its IDX files (gzip or plain), validated before use.

IDX layout: two zero bytes, a dtype code (0x08 = unsigned byte), the number of dimensions,
then one big-endian int32 per dimension, then the data. Images are 3-D (N, 28, 28), labels 1-D.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from mycroft.data.base import LabeledData
from mycroft.errors import DataError

ENV_VAR = "MYCROFT_FASHION_MNIST_DIR"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
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
# File stem per split; the IDX files are named "<stem>-images-idx3-ubyte[.gz]".
_STEMS = {"train": "train", "test": "t10k"}
_SIZES = {"train": 60_000, "test": 10_000}
# Test ids start here so a train id and a test id never collide.
TEST_ID_OFFSET = 1_000_000
_IMAGE_MAGIC = 0x00000803
_LABEL_MAGIC = 0x00000801


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_ROOT


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError.
        raise DataError(f"{path}: cannot read IDX file ({type(exc).__name__}: {exc})") from None


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array, with its magic number, header and size checked."""
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: file is {len(raw)} bytes, shorter than its IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{found:08x} (expected 0x{magic:08x}: "
            f"unsigned bytes, {ndim} dimension(s))"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says dims {dims} = {expected} bytes of data, "
            f"but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class FashionMNIST:
    """Fashion-MNIST: splits "train" (60k) and "test" (10k), features (N, 1, 28, 28) in [0, 1].

    Row ids: train i -> i, test i -> 1_000_000 + i. Root: argument, else $MYCROFT_FASHION_MNIST_DIR,
    else /usr/share/datasets/fashion-mnist.
    """

    splits: tuple[str, ...] = ("train", "test")
    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = _resolve_root(root)
        self.name = "fashion_mnist"

    @classmethod
    def available(cls, root: str | os.PathLike[str] | None = None) -> bool:
        """True when all four IDX files are present (their content is checked on load)."""
        base = _resolve_root(root)
        return all(
            _find(base, f"{stem}-{kind}-ubyte") is not None
            for stem in _STEMS.values()
            for kind in ("images-idx3", "labels-idx1")
        )

    def _path(self, split: str, kind: str) -> Path:
        name = f"{_STEMS[split]}-{kind}-ubyte"
        path = _find(self.root, name)
        if path is None:
            raise DataError(f"{self.root / name}[.gz]: Fashion-MNIST file not found")
        return path

    def load(self, split: str = "train") -> LabeledData:
        if split not in _STEMS:
            raise DataError(
                f"{self.root}: Fashion-MNIST has no split {split!r} (splits: train, test)"
            )
        image_path = self._path(split, "images-idx3")
        label_path = self._path(split, "labels-idx1")
        images = read_idx(image_path, _IMAGE_MAGIC, 3)
        labels = read_idx(label_path, _LABEL_MAGIC, 1)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{image_path}: images are {images.shape[1:]}, expected (28, 28)")
        if images.shape[0] != _SIZES[split]:
            raise DataError(
                f"{image_path}: {images.shape[0]} images, the {split} split has {_SIZES[split]}"
            )
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{label_path}: {labels.shape[0]} labels for {images.shape[0]} images")
        bad = np.flatnonzero(labels >= len(CLASS_NAMES))
        if bad.size:
            raise DataError(
                f"{label_path}: label {int(labels[bad[0]])} at row {int(bad[0])} "
                f"is not a class index 0..{len(CLASS_NAMES) - 1}"
            )
        features = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
        offset = 0 if split == "train" else TEST_ID_OFFSET
        return LabeledData(
            features=features,
            labels=labels.astype(np.int64),
            class_names=CLASS_NAMES,
            row_ids=np.arange(images.shape[0], dtype=np.int64) + offset,
            name=f"fashion_mnist/{split}",
        )


SOURCES = {"fashion_mnist": FashionMNIST}  # found by mycroft.data.registry
