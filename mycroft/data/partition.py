"""Carving one labelled split into disjoint parts (trainer, validation, owners)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator, PlainValidator

from mycroft.config_base import Distinct, shown
from mycroft.errors import ConfigError

ClassRef = str | int  # a class name, or an index into the source's class names


def _class_ref(value: object) -> ClassRef:
    # bool is an int in Python; a scenario's `true` is never meant as a class.
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"must be a class name, got {shown(value)}")
    return value


def _some(value: object) -> object:
    if isinstance(value, str) or (isinstance(value, list | tuple) and not value):
        raise ValueError("must be a non-empty list of class names")
    return value


# Config fields listing classes (names or indices); class_indices resolves them against a
# source. A ClassList must name at least one class, ClassesOrNone may be empty.
ClassesOrNone = Annotated[tuple[Annotated[ClassRef, PlainValidator(_class_ref)], ...], Distinct]
ClassList = Annotated[ClassesOrNone, BeforeValidator(_some)]


def class_indices(refs: Sequence[str | int], names: Sequence[str], where: str) -> list[int]:
    """Class names (or indices) as indices into `names`; an unknown one is a ConfigError
    naming `where[i]`. A name wins over an index, so digits' "3" and 3 agree."""
    out = []
    for i, ref in enumerate(refs):
        if str(ref) in names:
            out.append(list(names).index(str(ref)))
        elif isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(names):
            out.append(ref)
        else:
            raise ConfigError(f"{where}[{i}]: {ref!r} is not a class of the data ({list(names)})")
    return out


def scarce_counts(
    size: int, num_classes: int, scarce: Sequence[int], fraction: float
) -> np.ndarray:
    """Per-class counts summing to exactly `size`: a scarce class gets `fraction` of a normal
    class's count (largest-remainder rounding)."""
    weight = np.ones(num_classes)
    weight[list(scarce)] = fraction
    return apportion(size, weight)


def apportion(size: int, weight: np.ndarray) -> np.ndarray:
    """`size` split in proportion to `weight` (not all zero), summing to exactly `size`
    (largest-remainder rounding; ties go to the lower index)."""
    share = size * weight / weight.sum()
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[: size - int(counts.sum())]] += 1
    return counts


class RowPool:
    """Rows of one split not yet given to anyone; every draw removes its rows, so parts drawn
    from one pool are pairwise disjoint. Draws return sorted positions."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.free = np.ones(len(labels), dtype=bool)

    def left(self, classes: Sequence[int] | None = None) -> int:
        return int(self._mask(classes).sum())

    def _mask(self, classes: Sequence[int] | None) -> np.ndarray:
        return self.free if classes is None else self.free & np.isin(self.labels, classes)

    def draw(
        self,
        k: int,
        rng: np.random.Generator,
        where: str,
        classes: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        among: tuple[np.ndarray, str] | None = None,
    ) -> np.ndarray:
        """`k` free rows drawn uniformly (from `classes` only, when given; from the rows where
        among's mask is True, when given, its text naming them in errors, e.g.
        "sub-population rows")."""
        mask = self._mask(classes)
        if among is not None:
            mask = mask & among[0]
        pool = np.flatnonzero(mask)
        if k > len(pool):
            what = "rows" if among is None else among[1]
            if classes is not None and class_names is not None:
                what += f" of classes {[class_names[c] for c in classes]}"
            raise ConfigError(
                f"{where}: needs {k} {what}, only {len(pool)} are left after the parts drawn "
                "before it"
            )
        rows = np.sort(rng.choice(pool, size=k, replace=False))
        self.free[rows] = False
        return rows

    def draw_per_class(
        self, counts: np.ndarray, rng: np.random.Generator, where: str, class_names: Sequence[str]
    ) -> np.ndarray:
        """counts[c] rows of each class c."""
        parts = [
            self.draw(int(k), rng, where, [c], class_names) for c, k in enumerate(counts) if k > 0
        ]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
