"""Closed-form last-layer gradients of the per-sample cross-entropy loss.

With logits z = W e + b, p = softmax(z) and y one-hot: g_b = p - y and g_W = (p - y) ⊗ e.
The gradient vector is [g_b, vec(g_W)] with vec row-major over (C, d): dimension C·(d+1).
The trainer sends D_hard gradients computed by this same function in privacy mode, so the owner's
candidate gradients and the trainer's targets are exactly comparable.

Every gradient is an outer product u ⊗ [1, e] (u = p - y). `softmax_residuals` returns only u,
which lets OMP work on 10+64 numbers per row instead of 650 (see selection/omp.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from selection._contract import validate_head
from selection.types import Head

DEFAULT_BATCH = 65_536


def _check(embeddings: np.ndarray, labels: np.ndarray, head: Head) -> None:
    validate_head(head)
    c, d = head.weight.shape
    if embeddings.ndim != 2 or embeddings.shape[1] != d:
        raise ValueError(f"embeddings of shape {embeddings.shape} do not fit a head with d={d}")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels shape {labels.shape} != ({embeddings.shape[0]},)")
    if len(labels) and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c})")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or infinite values")


def _residual_batch(e: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    # float64 softmax: the trainer and the owner must agree to the last bit that matters.
    z = e.astype(np.float64) @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    z[np.arange(len(y)), y] -= 1.0
    return z


def softmax_residuals(
    embeddings: np.ndarray, labels: np.ndarray, head: Head, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """u = softmax(W e + b) - onehot(y), shape (N, C) float32."""
    _check(embeddings, labels, head)
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    out = np.empty((len(labels), head.num_classes), dtype=np.float32)
    for lo in range(0, len(labels), batch_size):
        hi = lo + batch_size
        out[lo:hi] = _residual_batch(embeddings[lo:hi], labels[lo:hi], w, b)
    return out


def _assemble(u: np.ndarray, e: np.ndarray) -> np.ndarray:
    n, c = u.shape
    g = np.empty((n, c * (e.shape[1] + 1)), dtype=np.float32)
    g[:, :c] = u
    # vec row-major over (C, d): entry (k, j) sits at k*d + j
    np.multiply(u[:, :, None], e[:, None, :], out=g[:, c:].reshape(n, c, e.shape[1]))
    return g


def iter_last_layer_gradients(
    embeddings: np.ndarray, labels: np.ndarray, head: Head, batch_size: int = DEFAULT_BATCH
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (row slice, (n, C*(d+1)) float32 gradients) batch by batch, for huge N."""
    _check(embeddings, labels, head)
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    for lo in range(0, len(labels), batch_size):
        sl = slice(lo, min(lo + batch_size, len(labels)))
        u = _residual_batch(embeddings[sl], labels[sl], w, b)
        yield sl, _assemble(u, embeddings[sl].astype(np.float64)).astype(np.float32, copy=False)


def last_layer_gradients(
    embeddings: np.ndarray, labels: np.ndarray, head: Head, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Per-sample last-layer gradients [g_b, vec(g_W)], shape (N, C*(d+1)) float32."""
    c, d = head.weight.shape
    out = np.empty((len(labels), c * (d + 1)), dtype=np.float32)
    for sl, g in iter_last_layer_gradients(embeddings, labels, head, batch_size):
        out[sl] = g
    return out


def gradient_rows(u: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Gradient vectors from precomputed residuals u (n, C) and embeddings (n, d)."""
    return _assemble(u.astype(np.float64), embeddings.astype(np.float64)).astype(np.float32)


def embeddings_from_gradients(gradients: np.ndarray, num_classes: int) -> np.ndarray:
    """The embeddings e behind gradients [u, vec(u ⊗ e)]: row k of u ⊗ e divided by u_k, for
    each row's largest |u_k|. Exact up to float rounding; a gradient with u = 0 (a row the head
    already fits perfectly) carries no embedding and gets NaN."""
    g = np.asarray(gradients, dtype=np.float64)
    n = len(g)
    d = (g.shape[1] - num_classes) // num_classes
    if g.ndim != 2 or g.shape[1] != num_classes * (d + 1):
        raise ValueError(f"gradients of shape {g.shape} do not fit C={num_classes}")
    u = g[:, :num_classes]
    k = np.argmax(np.abs(u), axis=1)
    uk = u[np.arange(n), k]
    rows = g[:, num_classes:].reshape(n, num_classes, d)[np.arange(n), k]
    with np.errstate(divide="ignore", invalid="ignore"):
        e = rows / uk[:, None]
    e[np.abs(uk) < 1e-12] = np.nan
    return e.astype(np.float32)
