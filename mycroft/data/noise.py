"""Controlled damage for simulated owners: wrong labels and noisy features, with masks saying
exactly which rows were touched (benchmarks check whether selection avoids them)."""

from __future__ import annotations

import numpy as np


def flip_labels(
    labels: np.ndarray, share: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly round(share * N) rows get a label drawn uniformly from the *other* classes.

    Returns (new labels, boolean mask of flipped rows). The count is exact, not Bernoulli,
    so a scenario's "30% wrong labels" is 30% in every build.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"label noise share must be in [0, 1), got {share}")
    n = len(labels)
    mask = np.zeros(n, dtype=bool)
    k = int(round(share * n))
    if k == 0:
        return labels.copy(), mask
    if num_classes < 2:
        raise ValueError("label noise needs at least two classes")
    rows = rng.choice(n, size=k, replace=False)
    mask[rows] = True
    out = labels.astype(np.int64, copy=True)
    # Adding 1..C-1 modulo C gives every other class with equal probability.
    out[rows] = (out[rows] + rng.integers(1, num_classes, size=k)) % num_classes
    return out, mask


def corrupt_features(
    features: np.ndarray,
    share: float,
    std: float,
    rng: np.random.Generator,
    scale: np.ndarray | float = 1.0,
    clip: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add Gaussian noise of std `std * scale` to exactly round(share * N) rows.

    `scale` is typically each feature's std over the source (so `std` is in units of the
    data's own spread); `clip` keeps images inside their value range. Returns (new features,
    boolean mask of corrupted rows).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"corruption share must be in [0, 1], got {share}")
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    n = len(features)
    mask = np.zeros(n, dtype=bool)
    out = features.astype(np.float32, copy=True)
    k = int(round(share * n))
    if k == 0 or std == 0:
        return out, mask
    rows = np.sort(rng.choice(n, size=k, replace=False))
    mask[rows] = True
    noise = rng.standard_normal(size=(k, *features.shape[1:])).astype(np.float32)
    out[rows] += noise * np.float32(std) * np.asarray(scale, dtype=np.float32)
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out, mask
