"""The trainer's own side: its data, its baseline model, and D_hard with the payload sent to owners.

Everything here is deterministic given the config (seeded splits, seeded training), which is what
lets a re-run under the same run id send the owners byte-identical requests.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moe.config import ModelConfig
from moe.model import MoEClassifier, build_model
from moe.train import EpochStats, Metrics, TrainConfig, evaluate, fit_normalization, train
from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError, DataError, MycroftError
from mycroft.messages import EmbeddedHard, RawHard
from trainer_node.acquire import ProgressEvent, ProgressFn
from trainer_node.config import DataConfig, ModelSettings, TrainerConfig, TrainingSettings
from trainer_node.dhard import DHard, build_dhard, systematic


@dataclass(frozen=True)
class TrainerData:
    train: LabeledData
    val: LabeledData
    test: LabeledData
    name: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def _carve(data: LabeledData, fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """Stratified split of `data` into (rest, carved) with `fraction` of each class carved."""
    rng = np.random.default_rng(seed)
    carved: list[np.ndarray] = []
    for c in np.unique(data.labels):
        idx = rng.permutation(np.flatnonzero(data.labels == c))
        k = round(len(idx) * fraction)
        if len(idx) > 1:
            k = min(len(idx) - 1, max(1, k))
        carved.append(idx[:k])
    mask = np.zeros(len(data), dtype=bool)
    if carved:
        mask[np.concatenate(carved)] = True
    return (
        data.subset(np.flatnonzero(~mask), f"{data.name}-train"),
        data.subset(np.flatnonzero(mask), f"{data.name}-val"),
    )


def load_trainer_data(cfg: DataConfig) -> TrainerData:
    """Train/val/test from an open_source table or prepared NPZ files."""
    from mycroft.data import NpzSource, open_source

    val: LabeledData | None
    if cfg.source is not None:
        source = open_source(cfg.source, base_dir=cfg.base_dir, where="data")
        full_train = source.load("train")
        splits = getattr(source, "splits", ("train", "test"))
        if "test" in splits:
            test = source.load("test")
        else:  # no test split: carve one first, so val and test never overlap
            full_train, test = _carve(full_train, cfg.val_fraction, cfg.split_seed + 1)
        train_part, val = _carve(full_train, cfg.val_fraction, cfg.split_seed)
        name = getattr(source, "name", str(cfg.source.get("source")))
    else:
        assert cfg.train is not None and cfg.test is not None
        train_part = NpzSource(cfg.train).load()
        test = NpzSource(cfg.test).load()
        val = NpzSource(cfg.val).load() if cfg.val is not None else None
        if val is None:
            train_part, val = _carve(train_part, cfg.val_fraction, cfg.split_seed)
        name = train_part.name
    for split, part in (("val", val), ("test", test)):
        if part.class_names != train_part.class_names:
            raise DataError(f"data.{split}: class names {part.class_names} differ from train's")
        if part.input_shape != train_part.input_shape:
            raise DataError(f"data.{split}: row shape {part.input_shape} differs from train's")
    for split, part in (("train", train_part), ("val", val), ("test", test)):
        if len(part) == 0:
            raise DataError(f"data.{split}: no rows")
    return TrainerData(train_part, val, test, name)


def _apply_extra(obj, extra: dict, where: str):
    """dataclasses.replace with config pass-through keys, naming any that do not exist."""
    names = {f.name for f in dataclasses.fields(obj)}
    for key in extra:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key")
    try:
        return dataclasses.replace(obj, **extra)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def model_config(settings: ModelSettings, data: TrainerData) -> ModelConfig:
    """The MoE's config, with normalisation fitted on the trainer's own training rows (the model
    carries it, so owners embed their raw rows exactly as the trainer does)."""
    shape = data.train.input_shape
    mean, std = fit_normalization(data.train)
    fitted = {
        "input_shape": shape,
        "num_classes": data.train.num_classes,
        "class_names": data.class_names,
        "stem": "conv" if len(shape) == 3 else "mlp",
        "gate": settings.gate,
        "num_experts": settings.num_experts,
        "top_k": settings.top_k,
        "embed_dim": settings.embed_dim,
        "norm_mean": mean,
        "norm_std": std,
    }
    # `extra` holds only ModelConfig's own field names (the config layer checked the names);
    # ModelConfig checks the values and names the field in its error.
    return ModelConfig(**{**fitted, **settings.extra})


def train_config(settings: TrainingSettings, seed: int, finetune: bool = False) -> TrainConfig:
    cfg = TrainConfig(
        epochs=(settings.finetune_epochs or settings.epochs) if finetune else settings.epochs,
        batch_size=settings.batch_size,
        lr=(settings.finetune_lr or settings.lr) if finetune else settings.lr,
        seed=seed,
        device=settings.device,
    )
    return _apply_extra(cfg, settings.extra, "training")


@dataclass
class Baseline:
    model: MoEClassifier
    config: ModelConfig
    test: Metrics
    val: Metrics
    dhard: DHard
    dhard_eval_accuracy: float | None
    train_seconds: float
    epoch_losses: tuple[float, ...] = ()  # mean training loss per epoch: is it still falling?
    # The checkpoint owners score with (uploaded, and used for D_hard's embeddings and
    # gradients): the final model, or an earlier epoch of the same run (selection.score_epoch).
    scorer: MoEClassifier | None = None

    @property
    def scoring_model(self) -> MoEClassifier:
        return self.scorer if self.scorer is not None else self.model


def dhard_class_indices(cfg: TrainerConfig, class_names: tuple[str, ...]) -> list[int] | None:
    if cfg.dhard.classes is None:
        return None
    out = []
    for name in cfg.dhard.classes:
        if name not in class_names:
            raise ConfigError(f"dhard.classes: {name!r} is not a class ({', '.join(class_names)})")
        out.append(class_names.index(name))
    return out


def accuracy_on(model: MoEClassifier, data: LabeledData, device: str = "cpu") -> float | None:
    return evaluate(model, data, device=device).accuracy if len(data) else None


def train_with_checkpoint(
    model: MoEClassifier,
    data: LabeledData,
    cfg: TrainConfig,
    checkpoint_epoch: int | None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> MoEClassifier:
    """Train `model` in place; return a copy of its weights after `checkpoint_epoch` epochs of
    the same run, or `model` itself when no earlier checkpoint is asked for. An early
    checkpoint picks more relevant rows than a converged one (METHOD.md §2). Both are where
    `model` was before training (training on cfg.device moves it there and back)."""
    early: list[MoEClassifier] = []
    home = next(model.parameters()).device

    def keep(stats: EpochStats) -> None:
        if checkpoint_epoch is not None and stats.epoch + 1 == checkpoint_epoch:
            # Taken mid-training, so on the training device: the copy goes home now.
            early.append(copy.deepcopy(model).to(home).eval())
        if on_epoch is not None:
            on_epoch(stats)

    train(model, data, cfg, progress=keep)
    return early[0] if early else model


def _epoch_events(progress: ProgressFn, epochs: int) -> Callable[[EpochStats], None]:
    """Baseline training as "epoch k of N" events: the bar (or log line) gets counts and an ETA."""
    progress(ProgressEvent("baseline", "training", None, 0, epochs))

    def on_epoch(stats: EpochStats) -> None:
        message = f"epoch {stats.epoch + 1} of {stats.epochs}, loss {stats.loss:.3f}"
        progress(ProgressEvent("baseline", message, None, stats.epoch + 1, stats.epochs))

    return on_epoch


def train_baseline(
    cfg: TrainerConfig, data: TrainerData, progress: ProgressFn | None = None
) -> Baseline:
    """Train on the trainer's own rows with the first seed, evaluate, build D_hard."""
    device = cfg.training.device
    mcfg = model_config(cfg.model, data)
    seed = cfg.training.seeds[0]
    model = build_model(mcfg, seed=seed)
    start = time.perf_counter()
    tcfg = train_config(cfg.training, seed)
    report_epoch = None if progress is None else _epoch_events(progress, tcfg.epochs)
    losses: list[float] = []

    def on_epoch(stats: EpochStats) -> None:
        losses.append(stats.loss)
        if report_epoch is not None:
            report_epoch(stats)

    scorer = train_with_checkpoint(model, data.train, tcfg, cfg.selection.score_epoch, on_epoch)
    seconds = time.perf_counter() - start
    dhard = build_dhard(
        model,
        data.val,
        classes=dhard_class_indices(cfg, data.class_names),
        shared_fraction=cfg.dhard.shared_fraction,
        seed=cfg.dhard.seed,
        device=device,
    )
    neighbours, min_error = cfg.dhard.neighbours, cfg.dhard.min_neighbour_error
    dhard = systematic(model, data.val, dhard, neighbours, min_error, device=device)
    if len(dhard.shared) == 0 or len(dhard.eval) == 0:
        raise MycroftError(
            f"D_hard is too small to go on (shared {len(dhard.shared)}, eval {len(dhard.eval)}): "
            "the baseline makes too few mistakes on the chosen classes of the validation split; "
            "widen dhard.classes or enlarge the validation split"
        )
    return Baseline(
        model=model,
        config=mcfg,
        test=evaluate(model, data.test, device=device),
        val=evaluate(model, data.val, device=device),
        dhard=dhard,
        dhard_eval_accuracy=accuracy_on(model, dhard.eval, device),
        train_seconds=seconds,
        epoch_losses=tuple(losses),
        scorer=scorer,
    )


def hard_payload(
    model: MoEClassifier, shared: LabeledData, mode: str, device: str = "cpu"
) -> RawHard | EmbeddedHard:
    """What the owners receive about D_hard-shared: raw rows, or (privacy-preserving) only
    penultimate embeddings (computed on `device`) and closed-form last-layer gradients."""
    labels = np.ascontiguousarray(shared.labels, dtype=np.int64)
    if mode == "raw":
        return RawHard(np.ascontiguousarray(shared.features, dtype=np.float32), labels)
    from moe.train import embed_numpy
    from selection.base import Head
    from selection.last_layer_grads import last_layer_gradients

    emb = embed_numpy(model, shared.features, batch_size=512, device=device)
    w, b = model.head_weights()
    grads = last_layer_gradients(emb, labels, Head(weight=w, bias=b))
    return EmbeddedHard(emb.astype(np.float32), grads.astype(np.float32), labels)
