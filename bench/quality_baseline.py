"""The trainer's baseline for the quality bench: trained with trainer_node's recipe and early
checkpoint, cached per (recipe, seed) so the families' seeds and the ablation train it once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.quality_config import BenchConfig
from moe.io import load_model, save_model
from moe.model import MoEClassifier, build_model
from trainer_node.baseline import TrainerData, model_config, train_config, train_with_checkpoint

CACHE = Path(tempfile.gettempdir()) / "mycroft-quality-cache"


def cache_key(cfg: BenchConfig, seed: int) -> str:
    recipe = {
        "scenario": cfg.scenario,
        "spec": cfg.spec().model_dump(mode="json"),
        "model": cfg.model().model_dump(),
        "training": {k: v for k, v in cfg.training().model_dump().items() if "finetune" not in k},
        "score_epoch": cfg.scoring_epoch(),
    }
    blob = json.dumps(recipe | {"seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train_baseline(
    cfg: BenchConfig, data: TrainerData, seed: int
) -> tuple[MoEClassifier, MoEClassifier, float]:
    """Final model and the scoring checkpoint (same run; the final model when none), seconds."""
    mcfg = model_config(cfg.model(), data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(mcfg)
    start = time.perf_counter()
    early = train_with_checkpoint(
        model, data.train, train_config(cfg.training(), seed), cfg.scoring_epoch()
    )
    return model, early, time.perf_counter() - start


def cached_baseline(
    cfg: BenchConfig, data: TrainerData, seed: int, log: Callable[[str], None]
) -> tuple[MoEClassifier, MoEClassifier, float, bool]:
    """(final model, scoring checkpoint, training seconds, whether cached) for this recipe
    and seed, trained on first use."""
    folder = CACHE / cache_key(cfg, seed)
    cached = (folder / "final.safetensors").exists()
    if cached:
        model = load_model(folder / "final.safetensors")
        early = load_model(folder / "early.safetensors")
        seconds = json.loads((folder / "meta.json").read_text())["train_seconds"]
    else:
        model, early, seconds = _train_baseline(cfg, data, seed)
        # written aside, then renamed: a concurrent bench process never reads half a model
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_model(model, tmp / "final.safetensors", write_json=False)
        save_model(early, tmp / "early.safetensors", write_json=False)
        (tmp / "meta.json").write_text(json.dumps({"train_seconds": seconds}))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"{cfg.scenario} seed {seed}: baseline {'cached' if cached else 'trained'} ({seconds:.1f} s)"
    )
    return model, early, seconds, cached
