"""Owner resources under attack: memory caches bounded by bytes, disk bounded by quotas, and
temp files of interrupted uploads removed at start.

Attacks reproduced before the fix: 40 Selects with distinct index parameters grew the owner's
RSS from 600 MiB to 3.7 GiB (one FAISS index per parameter set, kept forever); 26 small models
left 292 MB on disk forever; SIGKILL during uploads left .upload-* files forever.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers_grpc import (
    OwnerClient,
    bearer,
    owner_config,
    raw_request,
    running_owner,
    status_of,
    tiny_model_bytes,
)
from helpers_hardening import OwnerProcess, synthetic_data, wait_until, write_owner

from moe.io import model_sha256
from mycroft.data.base import LabeledData
from mycroft.v1 import owner_pb2 as pb
from owner_node.cache import ByteLRU, KeyedLocks
from owner_node.disk import DiskQuota
from owner_node.errors import Busy
from owner_node.models import LoadedModel, ModelStore, trainer_key

MiB = 1024 * 1024


# --- ByteLRU ------------------------------------------------------------------------------


def test_byte_lru_evicts_least_recently_used_by_bytes() -> None:
    evicted: list[str] = []
    lru: ByteLRU[str, str] = ByteLRU(100, on_evict=lambda k, v: evicted.append(k))
    lru.put("a", "A", 40)
    lru.put("b", "B", 40)
    assert lru.get("a") == "A"  # a is now the most recently used
    lru.put("c", "C", 40)  # 120 > 100: b goes, not a
    assert evicted == ["b"] and lru.keys() == ["a", "c"] and lru.nbytes == 80
    lru.put("a", "A2", 70)  # re-accounted: 110 > 100, c is now the LRU entry
    assert evicted == ["b", "c"] and lru.keys() == ["a"] and lru.nbytes == 70
    assert lru.setdefault("a", "other", 1) == "A2"  # present: shared, not replaced
    assert lru.pop("a") == "A2" and lru.nbytes == 0 and len(lru) == 0


def test_byte_lru_oversized_entry_is_returned_but_not_kept() -> None:
    lru: ByteLRU[str, str] = ByteLRU(100)
    lru.put("small", "s", 10)
    assert lru.put("huge", "H", 101) == "H"
    assert lru.setdefault("huge", "H", 101) == "H"
    assert "huge" not in lru and lru.keys() == ["small"] and lru.nbytes == 10
    lru.put("small", "s", 500)  # an entry that grew past the budget is dropped
    assert len(lru) == 0 and lru.nbytes == 0


def test_keyed_locks_are_dropped_after_use() -> None:
    locks = KeyedLocks()
    for i in range(50):
        with locks(("trainer", f"{i:064x}")):
            assert len(locks) == 1
    assert len(locks) == 0


# --- memory: 40 Selects with distinct index parameters -------------------------------------

CACHE_MIB = 32
ROWS, CLASSES, EMBED_DIM = 40_000, 10, 64  # embeddings 10 MiB, one index per params ~10.5 MiB


def _index_params(i: int) -> dict[str, float]:
    """Distinct index settings (each changes the index: flat/IVF, nprobe), and every fourth
    request only a distinct query_batch, which must reuse the default index."""
    kind = i % 4
    if kind == 0:
        return {"flat_threshold": 5_000 + i}  # exact index over each 4000-row class
    if kind == 1:
        return {"flat_threshold": 100 + i}  # IVF
    if kind == 2:
        return {"flat_threshold": 100, "nprobe": 1 + i}
    return {"query_batch": 7 + i}


@pytest.fixture(scope="module")
def big_owner_data() -> LabeledData:
    return synthetic_data(rows=ROWS, dim=16, classes=CLASSES)


def _attack(sha: str) -> list[pb.SelectRequest]:
    hard = synthetic_data(rows=20, dim=16, classes=CLASSES, seed=1)
    return [
        raw_request(f"p{i}", "feature", 5, sha, hard.features, hard.labels, params=_index_params(i))
        for i in range(40)
    ]


def test_distinct_index_params_keep_cache_bytes_bounded(tmp_path, big_owner_data) -> None:
    data = big_owner_data
    model = tiny_model_bytes(data, embed_dim=EMBED_DIM)
    sha = model_sha256(model)
    hard = synthetic_data(rows=20, dim=16, classes=CLASSES, seed=1)
    config = owner_config(tmp_path, selection={"cache_mib": CACHE_MIB, "methods": ["feature"]})
    with (
        running_owner(config, data) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        store = server.engine.models
        alice = OwnerClient.of(ch, "alice")
        alice.upload(model)
        keys_seen: set[tuple] = set()
        largest = 0
        for i, req in enumerate(_attack(sha)):
            assert len(alice.select(req).row_ids) == 5
            assert store.cache.nbytes <= CACHE_MIB * MiB, (i, store.cache.nbytes)
            index_keys = [k for k in store.cache.keys() if k[0] == "index"]
            keys_seen.update(index_keys)
            largest = max(largest, max((store.cache.size_of(k) or 0) for k in index_keys))
        # query_batch is a per-call knob: its ten requests shared one index key.
        assert len(keys_seen) == 31, len(keys_seen)
        assert store.cache.evictions > 0 and largest > 8 * MiB  # the bound did the work
        # Unbounded, these indexes alone would hold ~31 x 10.5 MiB.
        assert 31 * largest > 8 * CACHE_MIB * MiB
        loaded = store.get("alice", sha)
        by_query_batch = []
        for i, qb in enumerate((16, 32, 64, 128)):
            req = raw_request(
                f"qb{i}", "feature", 5, sha, hard.features, hard.labels, params={"query_batch": qb}
            )
            alice.select(req)
            (index,) = [
                c for (method, key), c in loaded.cache.items() if key[0] == 200_000 and key[1] == 16
            ]
            by_query_batch.append((id(index), index.builds))
        assert len(set(by_query_batch)) == 1  # built once, reused whatever the query batch


@pytest.mark.slow
def test_owner_rss_bounded_under_distinct_index_params(tmp_path, big_owner_data) -> None:
    """The owner in its own process: VmRSS after 40 such Selects stays within the cache budget
    plus a fixed allowance (one index being built, allocator slack), not ~31 indexes."""
    data = big_owner_data
    model = tiny_model_bytes(data, embed_dim=EMBED_DIM)
    sha = model_sha256(model)
    hard = synthetic_data(rows=20, dim=16, classes=CLASSES, seed=1)
    config = write_owner(
        tmp_path, data, {"alice": 1000}, selection={"cache_mib": CACHE_MIB, "methods": ["feature"]}
    )
    owner = OwnerProcess(config).start()
    try:
        with grpc.insecure_channel(owner.address) as ch:
            alice = OwnerClient.of(ch, "alice")
            alice.upload(model)
            alice.select(raw_request("p-warm", "feature", 5, sha, hard.features, hard.labels))
            before = owner.rss_kib()[0]
            peak = before
            for req in _attack(sha):
                alice.select(req)
                peak = max(peak, owner.rss_kib()[0])
        growth_mib = (peak - before) / 1024
        print(
            f"owner RSS {before / 1024:.0f} MiB -> peak {peak / 1024:.0f} MiB (+{growth_mib:.0f})"
        )
        assert growth_mib < CACHE_MIB + 96, growth_mib
    finally:
        owner.kill()


# --- disk quotas ----------------------------------------------------------------------------


def sized_model(data: LabeledData, seed: int, expert_hidden: int = 1400) -> bytes:
    """A model for `data` of roughly 400 KB (expert_hidden=1400): quotas are whole MiB."""
    import torch

    from moe.io import model_from_bytes, model_to_bytes
    from moe.model import build_model

    cfg = model_from_bytes(tiny_model_bytes(data)).config.replace(expert_hidden=expert_hidden)
    torch.manual_seed(seed)
    return model_to_bytes(build_model(cfg))


def disk_bytes(state: Path) -> int:
    """Bytes of every file under models/ and embeddings/ (what the quota covers)."""
    return sum(
        p.lstat().st_size
        for sub in ("models", "embeddings")
        for p in (state / sub).rglob("*")
        if p.is_file() or p.is_symlink()
    )


def stored(state: Path, trainer: str) -> set[str]:
    return {p.stem for p in (state / "models" / trainer_key(trainer)).glob("*.safetensors")}


def test_upload_over_trainer_quota_evicts_its_lru_model(tmp_path, data) -> None:
    models = [sized_model(data, seed=i) for i in range(3)]
    shas = [model_sha256(m) for m in models]
    assert all(350_000 < len(m) < 450_000 for m in models), [len(m) for m in models]
    config = owner_config(tmp_path, owner={"disk_quota_mib": 1, "disk_quota_per_trainer_mib": 1})
    state = config.owner.state_dir
    emb = state / "embeddings" / trainer_key("alice")
    hard = data.features[:6], data.labels[:6]
    with (
        running_owner(config, data) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        alice, bob = OwnerClient.of(ch, "alice"), OwnerClient.of(ch, "bob")
        for sha, model in zip(shas[:2], models[:2], strict=True):
            alice.upload(model)  # the warm-up writes its embeddings in the background: wait
            assert wait_until(lambda s=sha: any(emb.glob(f"{s}-*.npy")), 30)
            assert disk_bytes(state) <= MiB
        alice.select(raw_request("touch-0", "feature", 3, shas[0], *hard))  # model 0 used last
        alice.upload(models[2])  # 3 x 400 KB > 1 MiB: model 1, the LRU one, goes
        assert stored(state, "alice") == {shas[0], shas[2]}
        assert not any(emb.glob(f"{shas[1]}-*.npy"))  # its embeddings went with it
        assert disk_bytes(state) <= MiB
        assert not alice.has_model(shas[1]).present
        with pytest.raises(grpc.RpcError) as e:
            alice.select(raw_request("evicted", "feature", 3, shas[1], *hard))
        assert status_of(e)[0] == grpc.StatusCode.NOT_FOUND and "upload it first" in status_of(e)[1]

        # A model bigger than the quota itself: refused before a byte is written.
        huge = sized_model(data, seed=9, expert_hidden=6000)
        assert len(huge) > MiB
        with pytest.raises(grpc.RpcError) as e:
            alice.upload(huge)
        code, msg = status_of(e)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            "exceeds the owner's per-trainer disk quota (owner.disk_quota_per_trainer_mib)" in msg
        )
        assert "of 1.0 MiB" in msg and "upload a smaller model" in msg
        assert stored(state, "alice") == {shas[0], shas[2]}

        # The owner's total: bob's upload evicts the least recently used model of anyone.
        wait_until(lambda: any(emb.glob(f"{shas[2]}-*.npy")), 30)
        bob_model = sized_model(data, seed=20)
        bob.upload(bob_model)
        assert stored(state, "bob") == {model_sha256(bob_model)}
        assert stored(state, "alice") == {shas[2]}
        assert disk_bytes(state) <= MiB
        assert server.engine.models.disk.usage() <= MiB
        assert not list(state.rglob(".upload-*"))


def test_upload_refused_when_nothing_can_be_evicted(tmp_path, data) -> None:
    """Models in use by a running selection are not evicted: the upload that needs their room
    is Busy (UNAVAILABLE: retried, as they will be evictable), and nothing is left on disk."""
    first, second, third = (sized_model(data, seed=i) for i in range(3))
    store = ModelStore(
        tmp_path,
        data,
        max_bytes=64 * MiB,
        max_embed_dim=64,
        cache_bytes=64 * MiB,
        disk_quota_bytes=MiB,
        disk_quota_per_trainer_bytes=MiB,
    )

    def upload(model: bytes) -> LoadedModel:
        up = store.begin_upload("alice", model_sha256(model), len(model))
        up.add(model)
        return up.finish()

    loaded = [upload(first), upload(second)]
    with store.in_use(loaded[0]), store.in_use(loaded[1]):
        with pytest.raises(Busy, match="per-trainer disk quota") as e:
            store.begin_upload("alice", model_sha256(third), len(third))
        assert "not enough can be evicted now" in str(e.value) and "retry" in str(e.value)
    assert not list(tmp_path.rglob(".upload-*"))
    assert store.disk.usage() == len(first) + len(second)
    upload(third)  # now the LRU one goes
    assert stored(tmp_path, "alice") == {model_sha256(second), model_sha256(third)}
    assert store.disk.usage() == disk_bytes(tmp_path) <= MiB


def test_embeddings_never_evict_other_trainers_or_in_vain(tmp_path) -> None:
    """Embeddings are a recomputable cache: written only if the same trainer's LRU models can
    make room, else kept in memory (False); an impossible request evicts nothing."""
    models, emb = tmp_path / "models", tmp_path / "embeddings"
    emb.mkdir()
    files = {("a" * 24, "1" * 64): 300, ("a" * 24, "2" * 64): 300, ("b" * 24, "3" * 64): 300}
    for (tkey, sha), size in files.items():
        (models / tkey).mkdir(parents=True, exist_ok=True)
        (models / tkey / f"{sha}.safetensors").write_bytes(b"\0" * size)
        os.utime(models / tkey / f"{sha}.safetensors", (1000 + int(sha[0]),) * 2)
    dropped: list[tuple[str, str]] = []
    quota = DiskQuota(
        models,
        emb,
        "f" * 16,
        total_bytes=1000,
        per_trainer_bytes=800,
        on_evict=lambda t, s: dropped.append((t, s)),
    )
    quota.scan()
    assert quota.usage() == 900 and quota.usage("a" * 24) == 600
    # 600 more for model 2 would need model 1 gone and still exceed 800: nothing is evicted.
    assert not quota.reserve_embeddings("a" * 24, "2" * 64, "x.npy", 600)
    assert dropped == [] and quota.usage() == 900
    # 150 more: total 1050 > 1000; only a's own models may go: model 1 (a's LRU), not b's.
    assert quota.reserve_embeddings("a" * 24, "2" * 64, "x.npy", 150)
    assert dropped == [("a" * 24, "1" * 64)] and quota.usage() == 750
    with quota.busy("a" * 24, "2" * 64):  # in use: an upload needing its room waits (retry)
        with pytest.raises(Busy, match="not enough can be evicted now"):
            quota.reserve_upload("a" * 24, "4" * 64, 500)
    # b's upload: its own model first (per-trainer quota), then anyone's LRU (the total).
    res = quota.reserve_upload("b" * 24, "5" * 64, 600)
    assert dropped[1:] == [("b" * 24, "3" * 64), ("a" * 24, "2" * 64)]
    assert quota.usage() == 600
    quota.release_upload(res)
    assert quota.usage() == 0 and not any(models.rglob("*.safetensors"))


# --- SIGKILL mid-upload ---------------------------------------------------------------------


def _stalled_chunks(
    model: bytes, sha: str, sent: int, release: threading.Event
) -> Iterator[pb.ModelChunk]:
    chunk = 1024
    for i in range(0, len(model), chunk):
        if i == sent * chunk:
            release.wait(60)  # mid-stream: the owner has a temp file open
        yield pb.ModelChunk(
            sha256=sha if i == 0 else "",
            total_size=len(model) if i == 0 else 0,
            data=model[i : i + chunk],
        )


def test_sigkill_mid_upload_leaves_no_temp_files(tmp_path) -> None:
    data = synthetic_data(rows=400, dim=16, classes=4)
    config = write_owner(
        tmp_path, data, {"alice": 100}, selection={"methods": ["random", "feature"]}
    )
    state = tmp_path / "state"
    model = tiny_model_bytes(data)
    sha = model_sha256(model)
    hard = synthetic_data(rows=6, dim=16, classes=4, seed=1)
    request = raw_request("before-kill", "random", 5, "", hard.features, hard.labels)
    auth = bearer("alice")
    owner = OwnerProcess(config).start()
    try:
        with grpc.insecure_channel(owner.address) as ch:
            first = OwnerClient.of(ch, "alice").select(request)
        for _ in range(3):  # three rounds, as in the attack
            release = threading.Event()
            with grpc.insecure_channel(owner.address) as ch:
                stub = OwnerClient(ch, None).stub
                call = stub.UploadModel.future(
                    _stalled_chunks(model, sha, 4, release), metadata=auth, timeout=60
                )
                assert wait_until(lambda: any(state.rglob(".upload-*")), 30)
                owner.kill()
                release.set()
                with pytest.raises(grpc.RpcError):
                    call.result(timeout=30)
            assert any(state.rglob(".upload-*"))  # the crash left one behind
            owner.start()
            assert not list(state.rglob(".upload-*"))
        # The ledger is intact: same charge, and the request replays exactly.
        with sqlite3.connect(state / "ledger.db") as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with grpc.insecure_channel(owner.address) as ch:
            alice = OwnerClient.of(ch, "alice")
            again = alice.select(request)
            assert again.summary.replayed and again.row_ids.tolist() == first.row_ids.tolist()
            assert again.summary.budget.used == first.summary.budget.used == 5
            assert alice.upload(model).present  # and uploads work after the restart
            assert alice.has_model(sha).present
    finally:
        owner.kill()


def test_start_removes_strays_and_never_follows_symlinks(tmp_path, data) -> None:
    state = tmp_path / "state"
    tkey = trainer_key("alice")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.safetensors").write_bytes(b"x" * 100)
    (state / "models" / tkey).mkdir(parents=True)
    (state / "embeddings" / tkey).mkdir(parents=True)
    strays = [
        state / "models" / f"{'a' * 64}.safetensors",  # the older, unowned layout
        state / "models" / tkey / ".upload-abc123",
        state / "embeddings" / tkey / f".{'b' * 64}-{'c' * 16}.npy.xyz.tmp",  # write_atomic
        state / "embeddings" / tkey / f"{'d' * 64}-{'e' * 16}.npy",  # no such model
        state / "models" / tkey / "notes.txt",
    ]
    for p in strays:
        p.write_bytes(b"\0" * 1000)
    (state / "models" / "link").symlink_to(outside, target_is_directory=True)
    (state / "models" / tkey / f"{'f' * 64}.safetensors").symlink_to(outside / "keep.safetensors")
    ModelStore(state, data, max_bytes=MiB, max_embed_dim=64)
    assert not any(p.exists() or p.is_symlink() for p in strays)
    assert not (state / "models" / "link").is_symlink()
    assert not list((state / "models" / tkey).iterdir())
    assert (outside / "keep.safetensors").read_bytes() == b"x" * 100  # untouched
