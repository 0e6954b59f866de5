"""Sub-populations: a kind of example the trainer's model fails on because its training data
lacks it, while its validation and test data hold it and owners hold it at their own (usually
small) shares: the "needles" a selection method should find.

A scenario declares one in an optional top-level table:

  [subpop]
  kind = "transform" | "cluster"
  transform = "invert" | "rotate" | "texture"   kind = "transform" only; needs image rows
  classes = [...] | "all"                       classes that have a sub-population (default all)
  clusters = 8                                  kind = "cluster" only: k of the per-class k-means

and the shares of it in each part: `trainer.subpop_share` (default 0), `trainer.val_subpop_share`
and `trainer.test_subpop_share` (default: unset = what a draw without [subpop] gives, i.e. the
natural share for "cluster" and none for "transform"), `owners[i].subpop_share` (default 0).
A part of `size` rows gets exactly round(share * size) sub-population rows.

kind = "transform": rows are drawn exactly as without [subpop]; then round(share * size) of the
part's rows of the listed classes, chosen by a seeded generator of their own, are transformed:
  invert   lo + hi - x, with lo, hi the train split's value range
  rotate   90 degrees in the (H, W) plane (square images only)
  texture  a fixed seeded pattern of +-25% of the value range per pixel (white noise, the highest
           frequencies an image has) added, then clipped to the range
kind = "cluster": per listed class, k-means (scipy's kmeans2, k-means++ start, fixed seed) on the
raw flattened features of the class's rows in the whole train split; the sub-population is the
smallest cluster holding at least half an average cluster (rows / 2k). Smallest, because a
sub-population a model misses is a minority kind of example; the floor keeps a handful of
outliers from being chosen, which would leave too few rows for validation, test and owners.
Parts draw their sub-population rows and their other rows separately from the pool, so the
count is exact and parts stay disjoint. Rows of a test split are members when their nearest
centroid of their class is the chosen one. Works for tables and images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from mycroft.config_base import ConfigModel, FieldProblem, Int
from mycroft.data.base import LabeledData
from mycroft.data.partition import ClassList, RowPool, apportion, class_indices
from mycroft.errors import ConfigError

CLUSTER_SEED = 20240917  # fixed: a scenario's sub-population does not depend on the build seed
TEXTURE_SEED = 20240918
TEXTURE_AMPLITUDE = 0.25  # of the value range
MEMBERS, OTHERS = "sub-population rows", "rows outside the sub-population"


class SubpopSpec(ConfigModel):
    kind: Literal["transform", "cluster"]
    transform: Literal["invert", "rotate", "texture"] | None = None
    classes: ClassList | None = None  # None (or "all" in the file) = all classes
    clusters: Int = Field(8, ge=2, le=256)

    @field_validator("classes", mode="before")
    @classmethod
    def _all(cls, value: object) -> object:
        return None if value == "all" else value

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> SubpopSpec:
        if self.kind == "transform" and self.transform is None:
            raise FieldProblem("transform", 'required with kind = "transform"')
        if self.kind == "cluster" and self.transform is not None:
            raise FieldProblem("transform", 'only with kind = "transform"')
        if self.kind == "transform" and "clusters" in self.model_fields_set:
            raise FieldProblem("clusters", 'only with kind = "cluster"')
        return self


def transform_images(
    features: np.ndarray, transform: str, value_range: tuple[float, float]
) -> np.ndarray:
    """`features` (N, C, H, W) with `transform` applied to every row."""
    lo, hi = value_range
    if transform == "invert":
        return (np.float32(lo + hi) - features).astype(np.float32)
    if transform == "rotate":
        return np.ascontiguousarray(np.rot90(features, k=1, axes=(-2, -1)))
    if transform == "texture":
        signs = np.random.default_rng(TEXTURE_SEED).choice([-1.0, 1.0], size=features.shape[1:])
        pattern = (signs * TEXTURE_AMPLITUDE * (hi - lo)).astype(np.float32)
        return np.clip(features + pattern, lo, hi).astype(np.float32)
    raise ValueError(f"unknown transform {transform!r}")


def _check_images(transform: str, data: LabeledData, source: str) -> None:
    shape = data.input_shape
    if len(shape) != 3:
        raise ConfigError(
            f"subpop.transform: needs image rows (C, H, W), source {source} has tables"
        )
    if transform == "rotate" and shape[1] != shape[2]:
        raise ConfigError(
            f"subpop.transform: rotate needs square images, source {source} has "
            f"{shape[1]}x{shape[2]}"
        )


@dataclass(frozen=True)
class _Clusters:
    """One class's k-means: the centroids and which of them is the sub-population."""

    centroids: np.ndarray  # (k, features)
    chosen: int


def _cluster_class(rows: np.ndarray, k: int, where: str) -> tuple[_Clusters, np.ndarray]:
    """k-means on one class's flattened rows; (its clusters, member mask over those rows)."""
    from scipy.cluster.vq import kmeans2  # deferred: scipy's import is slow

    if len(rows) < 2 * k:
        raise ConfigError(
            f"subpop.clusters: {where} has {len(rows)} train rows, fewer than 2 x clusters = "
            f"{2 * k}"
        )
    x = rows.reshape(len(rows), -1).astype(np.float64)
    rng = np.random.default_rng(CLUSTER_SEED)
    centroids, assigned = kmeans2(x, k, minit="++", seed=rng)
    sizes = np.bincount(assigned, minlength=k)
    big_enough = sizes >= len(rows) / (2 * k)  # the largest cluster always qualifies
    chosen = int(np.flatnonzero(big_enough)[np.argmin(sizes[big_enough])])
    return _Clusters(centroids, chosen), assigned == chosen


@dataclass(frozen=True)
class Subpopulation:
    """A scenario's sub-population prepared against its source's train split; also the
    no-[subpop] case (spec None), where every draw is exactly the plain draw."""

    spec: SubpopSpec | None
    classes: tuple[int, ...]  # classes that have a sub-population
    train_member: np.ndarray  # kind "cluster": train rows in a chosen cluster; else all False
    clusters: dict[int, _Clusters]
    value_range: tuple[float, float]

    @classmethod
    def prepare(cls, spec: SubpopSpec | None, train: LabeledData, source: str) -> Subpopulation:
        names = train.class_names
        everything = tuple(range(len(names)))
        classes = (
            everything
            if spec is None or spec.classes is None
            else tuple(class_indices(spec.classes, names, "subpop.classes"))
        )
        member = np.zeros(len(train), dtype=bool)
        clusters: dict[int, _Clusters] = {}
        if spec is not None and spec.kind == "transform":
            _check_images(str(spec.transform), train, source)
        if spec is not None and spec.kind == "cluster":
            for c in classes:
                rows = np.flatnonzero(train.labels == c)
                where = f"class {names[c]!r} of {source}"
                clusters[c], member[rows] = _cluster_class(
                    train.features[rows], spec.clusters, where
                )
        value_range = (float(train.features.min()), float(train.features.max()))
        return cls(spec, classes, member, clusters, value_range)

    @property
    def kind(self) -> str | None:
        return None if self.spec is None else self.spec.kind

    def member_of(self, data: LabeledData) -> np.ndarray:
        """Kind "cluster": rows of another split (a test split) whose nearest centroid of their
        class is the chosen one. Otherwise all False."""
        member = np.zeros(len(data), dtype=bool)
        for c, found in self.clusters.items():
            rows = np.flatnonzero(data.labels == c)
            x = data.features[rows].reshape(len(rows), -1).astype(np.float64)
            # |x - c|^2 without |x|^2 (the same for every centroid): memory rows x k only.
            dist = (found.centroids**2).sum(axis=1) - 2 * x @ found.centroids.T
            member[rows] = dist.argmin(axis=1) == found.chosen
        return member

    def take(
        self,
        pool: RowPool,
        member: np.ndarray,
        size: int,
        share: float | None,
        rngs: tuple[np.random.Generator, np.random.Generator],
        where: tuple[str, str],
        classes: list[int] | None = None,
        names: tuple[str, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`size` rows from `pool` (`member`: its sub-population mask) and which of them are
        sub-population rows: exactly round(share * size), or the plain draw when share is None.
        rngs: (drawing, marking transformed rows); where: (the size field, the share field)."""
        rng, mark_rng = rngs
        if self.kind != "cluster" or share is None:
            rows = pool.draw(size, rng, where[0], classes, names)
            return rows, self._mark(pool.labels[rows], member[rows], share, mark_rng, where[1])
        k = int(round(share * size))
        inside = pool.draw(k, rng, where[1], classes, names, (member, MEMBERS))
        outside = pool.draw(size - k, rng, where[0], classes, names, (~member, OTHERS))
        rows = np.sort(np.concatenate([inside, outside]))
        return rows, member[rows]

    def take_per_class(
        self,
        pool: RowPool,
        counts: np.ndarray,
        share: float,
        rngs: tuple[np.random.Generator, np.random.Generator],
        where: tuple[str, str],
        names: tuple[str, ...],
    ) -> tuple[np.ndarray, np.ndarray]:
        """counts[c] rows of each class c from the train pool, round(share * total) of them
        sub-population rows (spread over the classes that have one in proportion to counts)."""
        rng, mark_rng = rngs
        member = self.train_member
        if self.kind != "cluster":
            rows = pool.draw_per_class(counts, rng, where[0], names)
            return rows, self._mark(pool.labels[rows], member[rows], share, mark_rng, where[1])
        k = int(round(share * int(counts.sum())))
        weight = np.zeros(len(counts))
        weight[list(self.classes)] = counts[list(self.classes)]
        if k > weight.sum():
            raise ConfigError(
                f"{where[1]}: needs {k} sub-population rows, the part draws only "
                f"{int(weight.sum())} rows of classes that have one"
            )
        inside = apportion(k, weight) if k else np.zeros(len(counts), dtype=np.int64)
        parts = []
        for c, n in enumerate(counts):
            parts.append(pool.draw(int(inside[c]), rng, where[1], [c], names, (member, MEMBERS)))
            parts.append(
                pool.draw(int(n - inside[c]), rng, where[0], [c], names, (~member, OTHERS))
            )
        rows = np.sort(np.concatenate(parts))
        return rows, member[rows]

    def take_split(
        self,
        data: LabeledData,
        size: int | None,
        share: float | None,
        rngs: tuple[np.random.Generator, np.random.Generator],
        where: tuple[str, str],
    ) -> tuple[LabeledData, np.ndarray]:
        """A test set drawn from a test split of its own (`data`), and its sub-population
        mask: `size` rows of it, or all of it when size is None or not smaller."""
        member = self.member_of(data)
        exact = self.kind == "cluster" and share is not None
        if size is not None and (size < len(data) or exact):
            rows, mask = self.take(RowPool(data.labels), member, size, share, rngs, where)
            return data.subset(rows), mask
        if exact:
            raise ConfigError(
                f'{where[1]}: needs {where[0]} with kind = "cluster" (the whole test split '
                "holds its natural share)"
            )
        return data, self._mark(data.labels, member, share, rngs[1], where[1])

    def _mark(
        self,
        labels: np.ndarray,
        member: np.ndarray,
        share: float | None,
        rng: np.random.Generator,
        where: str,
    ) -> np.ndarray:
        if self.kind != "transform":
            return member.copy()
        mask = np.zeros(len(labels), dtype=bool)
        k = int(round((share or 0.0) * len(labels)))
        if k == 0:
            return mask
        eligible = np.flatnonzero(np.isin(labels, self.classes))
        if k > len(eligible):
            raise ConfigError(
                f"{where}: needs {k} rows of the sub-population's classes to transform, the "
                f"part has {len(eligible)}"
            )
        mask[rng.choice(eligible, size=k, replace=False)] = True
        return mask

    def apply(self, data: LabeledData, mask: np.ndarray) -> LabeledData:
        """`data` with the transform applied to the rows in `mask` (kind "transform" only)."""
        if self.kind != "transform" or not mask.any():
            return data
        features = data.features.copy()
        features[mask] = transform_images(
            features[mask], str(self.spec.transform), self.value_range
        )  # type: ignore[union-attr]
        return replace(data, features=features)


def require_subpop_table(trainer: Any, owners: Sequence[Any]) -> None:
    """For a scenario without [subpop]: a share of it set above 0 is a FieldProblem."""
    shares: dict[tuple[str | int, ...], float | None] = {
        ("trainer", f): getattr(trainer, f)
        for f in ("subpop_share", "val_subpop_share", "test_subpop_share")
    }
    shares |= {("owners", i, "subpop_share"): o.subpop_share for i, o in enumerate(owners)}
    for loc, share in shares.items():
        if share:
            raise FieldProblem(loc, f"{share} needs a [subpop] table saying what it is")


def row_shares(
    held_ids: np.ndarray,
    row_ids: np.ndarray,
    masks: Mapping[str, np.ndarray | None],
    holder: str,
) -> dict[str, float | None]:
    """Share of `row_ids` (a subset of `held_ids`) where each mask (aligned with held_ids) is
    True; None for a mask that is None and for no row ids. An id not held is a ValueError."""
    ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    order = np.argsort(held_ids, kind="stable")
    at = np.searchsorted(held_ids[order], ids)
    held = at < len(held_ids)
    held[held] = held_ids[order[at[held]]] == ids[held]
    if not held.all():
        raise ValueError(f"row ids {ids[~held][:5].tolist()} are not held by {holder!r}")
    pos = order[at]
    return {
        name: None if mask is None or not len(ids) else float(mask[pos].mean())
        for name, mask in masks.items()
    }
