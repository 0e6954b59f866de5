"""Training and embedding throughput on the CPU and, when there is one, a CUDA GPU.

The model is the one the product trains for Fashion-MNIST (the fashion scenarios' [run.model]
through trainer_node.baseline.model_config: conv stem, top-2 of 4 experts, 28x28x1 inputs,
10 classes). Rows are seeded uniform noise of that shape: throughput does not depend on pixel
values (top-k routing sends every row through k experts whatever they are), and the bench
needs no dataset download.

Training: samples/s of moe.train.train at the product's default batch (TrainingSettings) and at
512 and 1024, one intra-op thread on the CPU (the trainer's default, moe.inference.auto_threads),
after a short warm-up run at the same batch. Embedding: rows/s of moe.inference.embed_numpy at
batch 4096, on the CPU with 1 and 2 threads and on the GPU, transfers included. Without CUDA the
GPU fields are null, with the reason.

    .venv/bin/python -m bench.scale_device [--quick]   # prints JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from typing import Any

import numpy as np
import torch

from bench.quality_config import BenchConfig
from moe.config import TrainConfig
from moe.device import describe
from moe.inference import embed_numpy
from moe.model import MoEClassifier, build_model, parameter_counts
from moe.train import train
from mycroft.data.base import LabeledData
from trainer_node.baseline import TrainerData, model_config
from trainer_node.config import TrainingSettings

FASHION_SHAPE = (1, 28, 28)
FASHION_CLASSES = tuple(f"class-{i}" for i in range(10))
TRAIN_BATCHES = tuple(sorted({TrainingSettings().batch_size, 512, 1024}))
EMBED_BATCH = 4096
EMBED_THREADS = (1, 2)
NO_CUDA = "no CUDA device"
# What the JSON says about the model: its shape, not every default.
MODEL_FIELDS = ("input_shape", "num_classes", "stem", "conv_channels", "stem_dim", "gate")
MODEL_FIELDS += ("num_experts", "top_k", "expert_hidden", "embed_dim", "num_moe_layers")
# Samples per timed training run, and rows per timed embedding run.
SIZES = {True: {"train": 4096, "embed": 8192}, False: {"train": 32768, "embed": 65536}}


def fashion_rows(n: int, seed: int = 0) -> LabeledData:
    rng = np.random.default_rng(seed)
    x = rng.random((n, *FASHION_SHAPE), dtype=np.float32)
    y = rng.integers(0, len(FASHION_CLASSES), n).astype(np.int64)
    return LabeledData(x, y, FASHION_CLASSES, np.arange(n, dtype=np.int64), "fashion-shaped")


def fashion_model(data: LabeledData) -> MoEClassifier:
    """The product's Fashion-MNIST model (normalisation fitted on `data`, as the trainer does)."""
    splits = TrainerData(train=data, val=data, test=data, name=data.name)
    return build_model(model_config(BenchConfig().model(), splits), seed=0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_rate(data: LabeledData, batch: int, samples: int, device: str) -> dict[str, Any]:
    """Training samples/s at `batch` (a fresh model; a warm-up run first, not timed)."""
    model = fashion_model(data)
    steps = max(2, samples // batch)
    cfg = TrainConfig(epochs=1, batch_size=batch, num_threads=1, device=device)
    train(model, data, dataclasses.replace(cfg, max_steps=2))  # kernels, allocator: untimed
    _sync(device)
    hist = train(model, data, dataclasses.replace(cfg, max_steps=steps))
    return {"samples_per_s": round(hist.samples_per_sec, 1), "samples": hist.samples}


def embed_rate(model: MoEClassifier, features: np.ndarray, device: str, threads: int) -> float:
    """Rows/s through embed_numpy at EMBED_BATCH (after one untimed batch)."""
    embed_numpy(model, features[:EMBED_BATCH], EMBED_BATCH, device=device, threads=threads)
    _sync(device)
    start = time.perf_counter()
    embed_numpy(model, features, EMBED_BATCH, device=device, threads=threads)
    _sync(device)
    return round(len(features) / (time.perf_counter() - start), 1)


def _ratios(gpu: dict[str, dict], cpu: dict[str, dict]) -> dict[str, float]:
    return {b: round(gpu[b]["samples_per_s"] / cpu[b]["samples_per_s"], 2) for b in cpu}


def measure_devices(quick: bool) -> dict[str, Any]:
    """Training samples/s per batch size and embedding rows/s, CPU and (when present) CUDA."""
    sizes = SIZES[quick]
    data = fashion_rows(max(sizes["train"], sizes["embed"], 2 * max(TRAIN_BATCHES)))
    has_cuda = torch.cuda.is_available()
    devices = ["cpu"] + (["cuda"] if has_cuda else [])
    rates = {
        device: {str(b): train_rate(data, b, sizes["train"], device) for b in TRAIN_BATCHES}
        for device in devices
    }
    model = fashion_model(data)
    features = data.features[: sizes["embed"]]
    embed_cpu = {f"threads_{t}": embed_rate(model, features, "cpu", t) for t in EMBED_THREADS}
    embed_gpu = embed_rate(model, features, "cuda", 1) if has_cuda else None
    gpu_name = describe(torch.device("cuda", 0)) if has_cuda else None
    return {
        "quick": quick,
        "torch": torch.__version__,
        "devices": {"cpu": platform.processor() or platform.machine(), "cuda": gpu_name},
        "cuda_reason": None if has_cuda else NO_CUDA,
        "model": {
            **{k: v for k, v in model.config.to_dict().items() if k in MODEL_FIELDS},
            "parameters": parameter_counts(model),
        },
        "rows": "seeded uniform noise, 28x28x1, 10 classes",
        "train": {
            "batch_sizes": list(TRAIN_BATCHES),
            "default_batch": TrainingSettings().batch_size,
            "cpu_threads": 1,
            "cpu": rates["cpu"],
            "cuda": rates.get("cuda"),
            "cuda_over_cpu": _ratios(rates["cuda"], rates["cpu"]) if has_cuda else None,
        },
        "embed": {
            "batch_size": EMBED_BATCH,
            "rows": len(features),
            "cpu_rows_per_s": embed_cpu,
            "cuda_rows_per_s": embed_gpu,
            "cuda_over_cpu_1_thread": (
                round(embed_gpu / embed_cpu["threads_1"], 2) if embed_gpu else None
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (~1 minute on CPU)")
    print(json.dumps(measure_devices(parser.parse_args().quick), indent=2))


if __name__ == "__main__":
    main()
