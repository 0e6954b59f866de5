"""Trainer-side measurement for the quality bench: fine-tune on own data + a subset exactly as
trainer_node.evaluate.train_and_measure does, and also measure the test set's sub-population
slice and its complement (which the product cannot see, so it does not); the control runs of
trainer_node.evaluate.Controls with the same slices; and the two references that judge an
owner's true utility on sub-population scenarios (`guided`, `oracle`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from moe.train import evaluate, predict
from mycroft.data.base import LabeledData
from mycroft.scenario import ScenarioData
from selection import Candidates, HardSet
from trainer_node.baseline import Baseline, TrainerData
from trainer_node.config import TrainingSettings
from trainer_node.evaluate import Controls, TrainedEval, trained_model

# Full information with D_hard-guided sampling: all of the owner's rows, as many draws as rows
# (full information's steps), each row drawn with a weight from its similarity to D_hard.
GUIDED = "guided"
# Oracle needles: exactly the owner's sub-population rows (labels as the owner holds them);
# only a simulation knows them.
ORACLE = "oracle"
# Half of the guided draws are uniform over the owner's rows, half follow the similarity
# weights, so every row stays in play; TEMPERATURE sets how sharply the weights favour the rows
# closest to D_hard (cosine similarity units).
GUIDED_MIX = 0.5
GUIDED_TEMPERATURE = 0.05


@dataclass(frozen=True)
class SliceEval(TrainedEval):
    """A trained cell's accuracies, with the test set's sub-population slice and the rest
    (None when the scenario has no sub-population)."""

    subpop_accuracy: float | None = None
    rest_accuracy: float | None = None


class SubpopSlice:
    """The test set split into its sub-population rows and the rest."""

    def __init__(self, test: LabeledData, subpop: np.ndarray | None):
        self.mask = None if subpop is None or not subpop.any() else subpop.astype(bool)
        self.test = test

    def of(self, model, test_accuracy: float) -> tuple[float | None, float | None]:
        """Accuracy on the slice and on the rest; the rest follows from the whole set's
        accuracy, so only the slice is predicted again."""
        if self.mask is None:
            return None, None
        rows = self.test.subset(np.flatnonzero(self.mask))
        sub = float((predict(model, rows.features) == rows.labels).mean())
        n, k = len(self.mask), int(self.mask.sum())
        rest = (test_accuracy * n - sub * k) / (n - k) if n > k else None
        return sub, rest


def measure(
    base: Baseline,
    data: TrainerData,
    extra: LabeledData,
    seed: int,
    settings: TrainingSettings,
    slices: SubpopSlice,
) -> SliceEval:
    """trainer_node.evaluate.train_and_measure's finetune branch (the same trained_model),
    keeping the model to measure the test slices too."""
    start = time.perf_counter()
    model = trained_model(base, data, extra, "finetune", seed, settings)
    seconds = time.perf_counter() - start
    test = evaluate(model, data.test)
    sub, rest = slices.of(model, test.accuracy)
    return SliceEval(evaluate(model, base.dhard.eval).accuracy, test, seconds, sub, rest)


class SliceControls(Controls):
    """trainer_node's control runs (same cache key and own-row draw), measured on the slices
    as well. Fine-tuning only: the bench never retrains."""

    def __init__(
        self,
        base: Baseline,
        data: TrainerData,
        settings: TrainingSettings,
        subpop_test: np.ndarray | None,
    ):
        super().__init__(base, data, settings)
        self.slice = SubpopSlice(data.test, subpop_test)
        sub, rest = self.slice.of(base.model, base.test.accuracy)
        self._unchanged = SliceEval(base.dhard_eval_accuracy or 0.0, base.test, 0.0, sub, rest)

    def unchanged(self) -> SliceEval:
        """The baseline itself: what a cell that sent no rows measures."""
        return self._unchanged

    def get(self, mode: str, seed: int, rows: int) -> SliceEval:
        if mode != "finetune":
            raise ValueError(f"the quality bench fine-tunes only, got mode {mode!r}")
        key = self._key(mode, seed, rows)
        if key not in self._runs:
            own, n = self.data.train, key[2]
            # the draw of Controls.get (tests/test_bench_quality.py checks the numbers agree)
            pick = np.random.default_rng([seed, n]).choice(len(own), size=n, replace=n > len(own))
            extra = own.subset(pick, name="control")
            self._runs[key] = measure(self.base, self.data, extra, seed, self.settings, self.slice)
        return self._runs[key]


def guided_weights(cand: Candidates, hard: HardSet) -> np.ndarray:
    """Each owner row's draw probability: GUIDED_MIX uniform, the rest a softmax over its best
    cosine similarity to a D_hard-shared row of the same label (rows of a label D_hard lacks
    get the uniform part only). Computed from the scoring checkpoint's embeddings, which the
    trainer holds; with full information it also holds every owner row."""
    n = len(cand.row_ids)
    emb = cand.embeddings / np.maximum(
        np.linalg.norm(cand.embeddings, axis=1, keepdims=True), 1e-12
    )
    ref = hard.embeddings / np.maximum(
        np.linalg.norm(hard.embeddings, axis=1, keepdims=True), 1e-12
    )
    best = np.full(n, -np.inf)
    for label in np.unique(hard.labels):
        mine = cand.labels == label
        if mine.any():
            best[mine] = (emb[mine] @ ref[hard.labels == label].T).max(axis=1)
    uniform = np.full(n, 1.0 / n)
    if not np.isfinite(best).any():
        return uniform
    logits = np.where(np.isfinite(best), best / GUIDED_TEMPERATURE, -np.inf)
    soft = np.exp(logits - logits.max())
    return GUIDED_MIX * uniform + (1 - GUIDED_MIX) * soft / soft.sum()


def guided_sample(rows: LabeledData, cand: Candidates, hard: HardSet, seed: int) -> LabeledData:
    """len(rows) draws with replacement by guided_weights (rows and cand in the same order)."""
    p = guided_weights(cand, hard)
    idx = np.random.default_rng([seed, 11]).choice(len(rows), size=len(rows), p=p)
    return rows.subset(np.sort(idx), name=f"{rows.name}-guided")


def oracle_rows(scen: ScenarioData, owner: str) -> np.ndarray:
    """The owner's sub-population rows (a bool mask over its rows)."""
    return np.asarray(scen.needles(owner), dtype=bool)
