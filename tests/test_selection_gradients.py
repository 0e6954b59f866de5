"""Closed-form last-layer gradients against torch autograd, and their factored form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selection import Head, iter_last_layer_gradients, last_layer_gradients, softmax_residuals
from selection.omp import FactoredAtoms


def _setup(n: int = 24, d: int = 7, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int64)
    head = Head(rng.normal(size=(c, d)).astype(np.float32), rng.normal(size=c).astype(np.float32))
    return e, y, head


def test_matches_torch_autograd_per_sample() -> None:
    e, y, head = _setup()
    got = last_layer_gradients(e, y, head, batch_size=5)
    c, d = head.weight.shape
    assert got.shape == (len(y), c * (d + 1)) and got.dtype == np.float32
    for i in range(len(y)):
        w = torch.tensor(head.weight, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(head.bias, dtype=torch.float64, requires_grad=True)
        logits = torch.tensor(e[i : i + 1], dtype=torch.float64) @ w.T + b
        torch.nn.functional.cross_entropy(logits, torch.tensor(y[i : i + 1])).backward()
        want = np.concatenate([b.grad.numpy(), w.grad.numpy().ravel()])  # [g_b, vec(g_W)]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_sum_over_batch_matches_autograd_sum_loss() -> None:
    e, y, head = _setup(n=200, d=16, c=10, seed=1)
    w = torch.tensor(head.weight, requires_grad=True)
    b = torch.tensor(head.bias, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(e) @ w.T + b, torch.from_numpy(y), reduction="sum"
    )
    loss.backward()
    want = np.concatenate([b.grad.numpy(), w.grad.numpy().ravel()])
    got = last_layer_gradients(e, y, head).astype(np.float64).sum(0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_chunked_generator_equals_full() -> None:
    e, y, head = _setup(n=103)
    full = last_layer_gradients(e, y, head)
    parts = list(iter_last_layer_gradients(e, y, head, batch_size=10))
    assert len(parts) == 11
    np.testing.assert_array_equal(np.concatenate([g for _, g in parts]), full)
    assert parts[-1][0] == slice(100, 103)


def test_factored_atoms_match_dense() -> None:
    e, y, head = _setup(n=300, d=9, c=4, seed=2)
    g = last_layer_gradients(e, y, head).astype(np.float64)
    atoms = FactoredAtoms(softmax_residuals(e, y, head), e, chunk=64)
    r = np.random.default_rng(3).normal(size=g.shape[1])
    np.testing.assert_allclose(atoms.matvec(r), g @ r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(atoms.rows(np.array([5, 7])), g[[5, 7]], rtol=1e-5, atol=1e-6)


def test_residuals_sum_to_zero_and_extreme_logits_stay_finite() -> None:
    e, y, head = _setup()
    u = softmax_residuals(e * 1e3, y, head)  # huge logits: softmax must not overflow
    assert np.isfinite(u).all()
    np.testing.assert_allclose(u.sum(1), 0.0, atol=1e-5)


def test_bad_inputs_rejected() -> None:
    e, y, head = _setup()
    with pytest.raises(ValueError, match="d="):
        last_layer_gradients(e[:, :-1], y, head)
    with pytest.raises(ValueError, match="labels"):
        last_layer_gradients(e, y[:-1], head)
    with pytest.raises(ValueError, match="labels"):
        last_layer_gradients(e, y + 10, head)
    bad = e.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        last_layer_gradients(bad, y, head)
