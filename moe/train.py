"""Training from scratch, continual fine-tuning with replay, evaluation and batched inference.

Everything runs in the calling process, on the device `TrainConfig.device` names (the CPU by
default; no DataLoader workers: the data is already an in-memory array, and worker processes
would only fight the trainer for the cores). The model is moved there for the call and back
afterwards; each source's whole arrays are copied there once, not per batch.
Determinism: a seeded CPU generator drives shuffling and replay sampling (so the rows each
step sees do not depend on the device), the torch RNG of the training device (Gumbel noise of
the permutation search) is seeded inside a forked RNG state, and deterministic algorithms are
switched on for the duration of the call. On the CPU a seed gives bit-identical weights; on a
GPU see `_deterministic`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from moe.config import TrainConfig
from moe.device import resolve_device

# embed_numpy and predict live in moe.inference; importable from here as before.
from moe.inference import (  # noqa: F401
    auto_threads,
    batches,
    embed_numpy,
    inference,
    on_device,
    predict,
)
from moe.model import MoEClassifier
from mycroft.data.base import LabeledData


@dataclass
class EpochStats:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    lr: float


@dataclass
class TrainHistory:
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    wall_time: float = 0.0

    @property
    def samples_per_sec(self) -> float:
        return self.samples / self.wall_time if self.wall_time > 0 else 0.0


@dataclass
class Metrics:
    """Evaluation of a model on labelled data.

    per_class_accuracy: class name -> accuracy, for classes present in the data.
    expert_share[i]: share of all top-k assignments that go to expert i (a row routed to k
        experts counts k times), averaged over MoE layers; sums to 1, uniform is 1/E.
    max_routing_imbalance: max over layers and experts of share_i / (1/E) = E * max share.
        1.0 is perfectly balanced; E/k means some expert receives every row (for k < E).
        The dense baseline has one expert and reports 1.0.
    """

    accuracy: float
    per_class_accuracy: dict[str, float]
    loss: float
    expert_share: list[float]
    max_routing_imbalance: float
    n: int


def fit_normalization(data: LabeledData) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (images (N, C, H, W)) or per-feature (tables (N, F)) mean and std."""
    x = np.asarray(data.features, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes)
    std = x.std(axis=axes)
    std = np.where(std < 1e-6, 1.0, std)  # constant features: leave them unscaled
    return mean.astype(np.float32), std.astype(np.float32)


# cuBLAS picks among reduction orders unless its workspace is fixed; this is the setting
# torch's reproducibility notes name. It is read when cuBLAS first runs in the process.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def _deterministic(
    seed: int, threads: int | None, device: torch.device | None = None
) -> Iterator[None]:
    """Seeded RNGs (CPU, and `device`'s when it is a GPU), restored afterwards; deterministic
    algorithms where torch has them (warn_only: an op without one warns, it does not fail).

    On a GPU, set CUBLAS_WORKSPACE_CONFIG when the user has not, so matrix products reduce in a
    fixed order; it takes effect only if cuBLAS has not run yet in this process.
    """
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    gpus: list[int] = []
    if device is not None and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        gpus = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=gpus, device_type="cuda"):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            torch.set_num_threads(prev_threads)


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * cosine)


def _tensors(data: LabeledData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All of `data` on `device`, once (on the CPU a view of the arrays, no copy)."""
    x = torch.from_numpy(np.ascontiguousarray(data.features, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64))
    return x.to(device), y.to(device)


def _check(model: MoEClassifier, data: LabeledData) -> None:
    if data.input_shape != model.config.input_shape:
        raise ValueError(
            f"{data.name}: rows {data.input_shape} vs model {model.config.input_shape}"
        )
    if len(data) == 0:
        raise ValueError(f"{data.name}: no rows")
    if int(data.labels.max()) >= model.config.num_classes or int(data.labels.min()) < 0:
        raise ValueError(f"{data.name}: labels outside [0, {model.config.num_classes})")


def _loop(
    model: MoEClassifier,
    sources: list[LabeledData],
    epoch_index: Callable[[torch.Generator], tuple[np.ndarray, ...]],
    cfg: TrainConfig,
    progress: Callable[[EpochStats], None] | None,
) -> TrainHistory:
    """Shared optimisation loop. `epoch_index(gen)` gives, per source, the rows used this epoch.

    The model trains on cfg.device and is back where it was when this returns (or raises).
    """
    device = resolve_device(cfg.device)
    with on_device(model, device):
        return _optimise(model, sources, epoch_index, cfg, progress, device)


def _optimise(
    model: MoEClassifier,
    sources: list[LabeledData],
    epoch_index: Callable[[torch.Generator], tuple[np.ndarray, ...]],
    cfg: TrainConfig,
    progress: Callable[[EpochStats], None] | None,
    device: torch.device,
) -> TrainHistory:
    """_loop's body, with the model already on `device`."""
    tensors = [_tensors(s, device) for s in sources]
    hist = TrainHistory()
    with _deterministic(cfg.seed, cfg.num_threads or auto_threads(model), device):
        # Index draws stay on the CPU (explicitly: device= below), so the rows each step sees
        # are the same on any device; only the finished index vectors travel.
        gen = torch.Generator().manual_seed(cfg.seed)
        per_epoch = math.ceil(sum(len(i) for i in epoch_index(gen)) / cfg.batch_size)
        gen.manual_seed(cfg.seed)  # the size probe must not shift the real epochs' draws
        total = per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        warmup = cfg.warmup_steps
        if warmup is None:
            warmup = max(1, round(cfg.warmup_fraction * total))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        start = time.perf_counter()
        for epoch in range(cfg.epochs):
            if hist.steps >= total:
                break
            # Rows of all sources, tagged by source, shuffled together.
            idx = epoch_index(gen)
            tag = torch.cat([torch.full((len(i),), s, device="cpu") for s, i in enumerate(idx)])
            row = torch.cat([torch.as_tensor(i, dtype=torch.long, device="cpu") for i in idx])
            order = torch.randperm(len(row), generator=gen, device="cpu")
            tag, row = tag[order].to(device), row[order].to(device)
            # Summed on the device in float64: the same IEEE operations as a Python float sum
            # of float(ce) * n, without a GPU -> CPU sync every step.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            n_seen = 0
            for b in range(0, len(row), cfg.batch_size):
                if hist.steps >= total:
                    break
                bt, br = tag[b : b + cfg.batch_size], row[b : b + cfg.batch_size]
                xs = [tensors[s][0][br[bt == s]] for s in range(len(sources))]
                ys = [tensors[s][1][br[bt == s]] for s in range(len(sources))]
                x, y = torch.cat(xs), torch.cat(ys)
                lr = _lr_at(hist.steps, total, warmup, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                logits = model(x)
                ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                loss = ce + model.last_aux_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # Keep the value, drop the graph: a graph-attached tensor on the module would
                # make the model impossible to deep-copy (e.g. a checkpoint taken mid-training).
                model.last_aux_loss = model.last_aux_loss.detach()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                hist.steps += 1
                hist.samples += len(y)
                loss_sum += ce.detach().double() * len(y)
                n_seen += len(y)
            hist.epoch_losses.append(float(loss_sum) / max(1, n_seen))
            if progress is not None:
                progress(
                    EpochStats(epoch, cfg.epochs, hist.steps, total, hist.epoch_losses[-1], lr)
                )
        hist.wall_time = time.perf_counter() - start
    model.eval()
    return hist


def train(
    model: MoEClassifier,
    data: LabeledData,
    cfg: TrainConfig,
    progress: Callable[[EpochStats], None] | None = None,
) -> TrainHistory:
    """Train from the model's current weights on `data` (AdamW, linear warmup, cosine decay).

    If the model's config has no input normalisation yet, it is fitted on `data` first and
    stored in the config. Leaves the model in eval mode.
    """
    _check(model, data)
    if model.config.norm_mean is None:
        model.set_normalization(*fit_normalization(data))
    n = len(data)

    def epoch_index(g: torch.Generator) -> tuple[np.ndarray, ...]:
        return (torch.randperm(n, generator=g, device="cpu").numpy(),)

    return _loop(model, [data], epoch_index, cfg, progress)


def finetune(
    model: MoEClassifier,
    new: LabeledData,
    old: LabeledData,
    cfg: TrainConfig,
    replay_fraction: float = 0.5,
    progress: Callable[[EpochStats], None] | None = None,
) -> TrainHistory:
    """Continue training on `new`, replaying old rows; lr re-warmed to cfg.lr, then re-decayed.

    Each epoch sees every new row plus a fresh sample of old rows sized so that old rows make
    up `replay_fraction` of the epoch (capped at len(old)). Normalisation is kept as trained.
    """
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError("replay_fraction must be in [0, 1)")
    _check(model, new)
    if replay_fraction > 0:
        _check(model, old)
    n_new = len(new)
    n_old = min(len(old), round(n_new * replay_fraction / (1 - replay_fraction)))

    def epoch_index(g: torch.Generator) -> tuple[np.ndarray, ...]:
        if n_old == 0:
            return np.arange(n_new), np.zeros(0, dtype=np.int64)
        replay = torch.randperm(len(old), generator=g, device="cpu")[:n_old]
        return np.arange(n_new), replay.numpy().astype(np.int64)

    return _loop(model, [new, old], epoch_index, cfg, progress)


def evaluate(
    model: MoEClassifier,
    data: LabeledData,
    batch_size: int = 512,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> Metrics:
    _check(model, data)
    e = model.config.effective_experts
    counts = torch.zeros(model.config.num_moe_layers, e, dtype=torch.long, device="cpu")
    loss_sum, preds = 0.0, []
    y_all = torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64))
    with inference(model, device, threads) as dev:
        for b, x in enumerate(batches(data.features, batch_size, dev)):
            y = y_all[b * batch_size : b * batch_size + len(x)].to(dev)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            counts += model.last_expert_counts.cpu()
            preds.append(logits.argmax(dim=1).cpu())
    pred = torch.cat(preds).numpy()
    labels = data.labels
    per_class = {
        model.config.class_names[c]: float((pred[labels == c] == c).mean())
        for c in np.unique(labels)
    }
    share = counts.double() / counts.sum(dim=1, keepdim=True).clamp_min(1)
    return Metrics(
        accuracy=float((pred == labels).mean()),
        per_class_accuracy=per_class,
        loss=loss_sum / len(data),
        expert_share=[float(v) for v in share.mean(dim=0)],
        max_routing_imbalance=float(share.max() * e),
        n=len(data),
    )
