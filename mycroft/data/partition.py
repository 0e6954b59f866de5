"""Carving one labelled split into disjoint parts (trainer, validation, owners)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mycroft.errors import ConfigError


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
    ) -> np.ndarray:
        """`k` free rows drawn uniformly (from `classes` only, when given)."""
        pool = np.flatnonzero(self._mask(classes))
        if k > len(pool):
            what = "rows"
            if classes is not None and class_names is not None:
                what = f"rows of classes {[class_names[c] for c in classes]}"
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
