"""Feature matching ("RetrieveTopK" with coverage): L2-normalised embeddings, FAISS inner-product
search among owner rows of the same label, then round-robin over D_hard samples (1st neighbour of
every sample, then 2nd, ...) skipping duplicates until B rows. Every D_hard sample whose class the
owner holds gets its nearest row in before any sample gets a second one (when B >= |D_hard|).

Index per class: IndexFlatIP up to `flat_threshold` rows, IVF (nlist ≈ 4·sqrt(N), nprobe 16,
Flat or SQ8 lists) above. Building is the expensive part and owners reuse their index across
requests: `FeatureIndexCache` holds per-class indexes keyed by the identity of the embeddings and
labels arrays (and keeps those arrays alive, so ids cannot be recycled). Each strategy instance
owns one cache; pass `cache=` to share one, or prebuild it with `FeatureIndexCache.build`.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field

import faiss
import numpy as np

from selection.base import Candidates, Job, Ranked, Strategy, register
from selection.params import Interval, Options


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    return x


@dataclass
class ClassIndex:
    index: faiss.Index
    positions: np.ndarray  # index id -> candidate position
    exact: bool
    quantizer: faiss.Index | None = None  # IVF: keep the coarse quantizer alive with the index


@dataclass
class IndexParams:
    flat_threshold: int = 200_000
    nprobe: int = 16
    ivf_storage: str = "flat"  # "flat" or "sq8"
    train_per_list: int = 64  # training rows per IVF list (faiss warns under 39)


def _index_nbytes(ci: ClassIndex) -> int:
    index = ci.index
    if ci.exact:  # IndexFlat: the vectors themselves
        return ci.positions.nbytes + index.ntotal * index.code_size
    # IVF: a code and a 64-bit id per vector, the coarse centroids, per-list bookkeeping
    per_list = index.d * 4 + 64
    return ci.positions.nbytes + index.ntotal * (index.code_size + 8) + index.nlist * per_list


def build_class_index(emb_norm: np.ndarray, positions: np.ndarray, p: IndexParams) -> ClassIndex:
    n, d = emb_norm.shape
    if n <= p.flat_threshold:
        index = faiss.IndexFlatIP(d)
        index.add(emb_norm)
        return ClassIndex(index, positions, exact=True)
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    if p.ivf_storage == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    elif p.ivf_storage == "flat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"ivf_storage must be 'flat' or 'sq8', got {p.ivf_storage!r}")
    rng = np.random.default_rng(0)
    n_train = min(n, p.train_per_list * nlist)
    train = emb_norm[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else emb_norm
    index.train(train)
    index.add(emb_norm)
    index.nprobe = min(p.nprobe, nlist)
    return ClassIndex(index, positions, exact=False, quantizer=quantizer)


@dataclass
class FeatureIndexCache:
    """Per-class indexes for one embeddings array; rebuilt when a different array arrives.
    The arrays are treated as immutable: after changing them in place, call `clear()`."""

    params: IndexParams = field(default_factory=IndexParams)
    _key: tuple | None = None
    _refs: tuple = ()
    _indexes: dict[int, ClassIndex] = field(default_factory=dict)
    builds: int = 0  # how many class indexes were built (lets tests and owners see reuse)

    @property
    def key(self) -> tuple:
        """What the cached indexes depend on: the index settings, nothing per call."""
        return astuple(self.params)

    @property
    def nbytes(self) -> int:
        """Memory the built indexes hold (codes, ids, centroids, positions), so an owner can
        bound its caches by bytes. The bound embeddings/labels arrays are not counted: they
        belong to the caller (an owner accounts for them on their own)."""
        return sum(_index_nbytes(ci) for ci in list(self._indexes.values()))

    def clear(self) -> None:
        self._key, self._refs, self._indexes = None, (), {}

    def _bind(self, embeddings: np.ndarray, labels: np.ndarray) -> None:
        key = (id(embeddings), embeddings.shape, id(labels), labels.shape)
        if key != self._key:
            self._key, self._refs, self._indexes = key, (embeddings, labels), {}

    def get(
        self, embeddings: np.ndarray, labels: np.ndarray, c: int, positions: np.ndarray
    ) -> ClassIndex:
        self._bind(embeddings, labels)
        if c not in self._indexes:
            self._indexes[c] = build_class_index(
                l2_normalise(embeddings[positions]), positions, self.params
            )
            self.builds += 1
        return self._indexes[c]

    @classmethod
    def build(cls, candidates: Candidates, params: IndexParams | None = None) -> FeatureIndexCache:
        """Prebuild every class index of an owner (e.g. at owner start-up)."""
        cache = cls(params or IndexParams())
        if candidates.embeddings is None:
            raise ValueError("FeatureIndexCache.build needs candidates.embeddings")
        labels = candidates.labels
        for c in np.unique(labels).tolist():
            cache.get(candidates.embeddings, labels, int(c), np.flatnonzero(labels == c))
        return cache


def round_robin(neigh: np.ndarray, sims: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth-major walk over the (M, k) neighbour table, first occurrences only, up to budget."""
    flat, flat_s = neigh.T.ravel(), sims.T.ravel()
    ok = flat >= 0
    flat, flat_s = flat[ok], flat_s[ok]
    _, first = np.unique(flat, return_index=True)
    keep = np.sort(first)[:budget]
    return flat[keep], flat_s[keep]


@register("feature")
class FeatureMatching(Strategy):
    """`flat_threshold`: class size above which a class gets an IVF index; `nprobe`: IVF lists
    searched; `ivf_storage`: "flat" or "sq8" IVF lists; `query_batch`: D_hard rows per search;
    `cache`: a FeatureIndexCache to share between instances."""

    needs_embeddings = True
    param_constraints = {
        "flat_threshold": Interval(int, 1, 10_000_000),
        "nprobe": Interval(int, 1, 65_536),
        "ivf_storage": Options(("flat", "sq8")),  # from Python only
        "query_batch": Interval(int, 1, 65_536),
    }
    local_params = frozenset({"cache"})  # an index cache object the owner passes

    def __init__(
        self,
        flat_threshold: int = 200_000,
        nprobe: int = 16,
        ivf_storage: str = "flat",
        query_batch: int = 4096,
        cache: FeatureIndexCache | None = None,
    ) -> None:
        params = IndexParams(flat_threshold, nprobe, ivf_storage)
        self.cache = cache if cache is not None else FeatureIndexCache(params)
        self.query_batch = query_batch

    @staticmethod
    def _params(ci: ClassIndex, k: int) -> faiss.SearchParameters | None:
        # asked for every row of an IVF class: probe all lists so none is unreachable
        if ci.exact or k < ci.index.ntotal:
            return None
        return faiss.SearchParametersIVF(nprobe=ci.index.nlist)

    def _rank(self, job: Job) -> Ranked:
        candidates, hard, plan, timer = job.candidates, job.hard, job.plan, job.timer
        budget = job.budget
        with timer("plan"):
            queries = l2_normalise(hard.embeddings)
        m = len(hard.labels)
        largest = max((len(p) for p in plan.positions.values()), default=1)
        depth = min(max(2 * -(-budget // m) + 1, 4), largest)
        while True:
            neigh = np.full((m, depth), -1, dtype=np.int64)
            sims = np.full((m, depth), -np.inf, dtype=np.float32)
            exhausted = True
            for c, pos in plan.positions.items():
                with timer("index"):
                    ci = self.cache.get(candidates.embeddings, candidates.labels, c, pos)
                rows = np.flatnonzero(hard.labels == c)
                k = min(depth, len(pos))
                exhausted &= k == len(pos)
                with timer("search"):
                    for lo in range(0, len(rows), self.query_batch):
                        q = rows[lo : lo + self.query_batch]
                        s, i = ci.index.search(queries[q], k, params=self._params(ci, k))
                        found = i >= 0
                        neigh[q[:, None], np.arange(k)] = np.where(found, ci.positions[i], -1)
                        sims[q[:, None], np.arange(k)] = np.where(found, s, -np.inf)
            with timer("round_robin"):
                chosen, scores = round_robin(neigh, sims, budget)
            # duplicates can leave the walk short: search deeper while rows remain
            if len(chosen) >= budget or exhausted:
                break
            depth *= 2
        return Ranked(chosen, scores)
