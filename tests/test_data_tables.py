"""NPZ, CSV and Parquet sources, save_npz round trips, and the open_source factory."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mycroft.data import (
    CsvSource,
    Digits,
    LabeledData,
    NpzSource,
    ParquetSource,
    available_sources,
    open_source,
    register_source,
    save_npz,
)
from mycroft.data import registry as registry_mod
from mycroft.errors import ConfigError, DataError


def sample(n: int = 6, shape: tuple[int, ...] = (1, 4, 4)) -> LabeledData:
    rng = np.random.default_rng(1)
    return LabeledData(
        features=rng.random((n, *shape), dtype=np.float32),
        labels=np.arange(n, dtype=np.int64) % 3,
        class_names=("cat", "dog", "wolf"),
        row_ids=np.arange(n, dtype=np.int64) * 7 + 100,
        name="owner_a",
    )


# NPZ -----------------------------------------------------------------------------------------


def test_save_npz_round_trip(tmp_path: Path) -> None:
    data = sample()
    path = save_npz(data, tmp_path / "sub" / "a.npz")
    back = NpzSource(path).load()
    assert back.features.dtype == np.float32 and back.features.shape == (6, 1, 4, 4)
    assert np.array_equal(back.features, data.features)
    assert np.array_equal(back.labels, data.labels) and back.labels.dtype == np.int64
    assert np.array_equal(back.row_ids, data.row_ids)
    assert (back.class_names, back.name, back.feature_names) == (data.class_names, "owner_a", ())
    table = LabeledData(
        np.ones((2, 3), np.float32),
        np.array([0, 1]),
        ("x", "y"),
        np.array([5, 9]),
        "t",
        ("a", "b", "c"),
    )
    back = NpzSource(save_npz(table, tmp_path / "t.npz", compress=True)).load()
    assert back.feature_names == ("a", "b", "c") and back.row_ids.tolist() == [5, 9]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_npz_string_labels_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, features=np.zeros((3, 2)), labels=np.array(["wolf", "dog", "wolf"]))
    data = NpzSource(path).load()
    assert data.class_names == ("dog", "wolf") and data.labels.tolist() == [1, 0, 1]
    assert data.row_ids.tolist() == [0, 1, 2] and data.features.dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"features": np.array([[1.0], [2.0]], dtype=object), "labels": np.array([0, 1])}, "'features' cannot be loaded"),
        ({"labels": np.array([0, 1])}, "missing array 'features'"),
        ({"features": np.array([[1.0], [np.nan]]), "labels": np.array([0, 1])}, "row 1: feature value is NaN"),
        ({"features": np.zeros((2, 1)), "labels": np.array([0, 1, 1])}, "3 labels for 2 feature rows"),
        ({"features": np.zeros((2, 1)), "labels": np.array([0, 1]), "row_ids": np.array([4, 4])}, "row id 4 appears more than once"),
        ({"features": np.zeros((2, 1)), "labels": np.array([0, 3]), "class_names": np.array(["a", "b"])}, "row 1: label 3 is outside"),
        ({"features": np.array([["a"], ["b"]]), "labels": np.array([0, 1])}, "non-numeric dtype"),
        ({"features": np.zeros((0, 2)), "labels": np.zeros(0, np.int64)}, "'features' has no rows"),
    ],
)  # fmt: skip
def test_npz_rejects_bad_files(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=rf"bad\.npz.*{message}") as err:
        NpzSource(path).load()
    assert str(path) in str(err.value)


def test_npz_not_a_zip_and_missing(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable NPZ"):
        NpzSource(tmp_path / "junk.npz").load()
    with pytest.raises(DataError, match=r"gone\.npz: NPZ file not found"):
        NpzSource(tmp_path / "gone.npz").load()
    with pytest.raises(DataError, match="no split 'test'"):
        NpzSource(tmp_path / "gone.npz").load("test")


# CSV / Parquet -------------------------------------------------------------------------------

CSV = "x1,x2,label,fold\n1,2.5,cat,train\n3,4,dog,test\n5,6,cat,train\n"


def test_csv_reads_labels_features_splits(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(CSV)
    whole = CsvSource(path, "label", feature_columns=["x1", "x2", "fold"][:2]).load()
    assert whole.class_names == ("cat", "dog") and whole.labels.tolist() == [0, 1, 0]
    assert whole.features.tolist() == [[1, 2.5], [3, 4], [5, 6]]
    assert whole.feature_names == ("x1", "x2") and whole.row_ids.tolist() == [0, 1, 2]
    src = CsvSource(path, "label", split_column="fold", class_names=["dog", "cat"])
    assert src.splits == ("test", "train")
    test = src.load("test")
    assert test.labels.tolist() == [0] and test.row_ids.tolist() == [1]
    assert src.load("train").feature_names == ("x1", "x2")
    with pytest.raises(DataError, match="without split_column"):
        CsvSource(path, "label", feature_columns=["x1"]).load("test")


def test_csv_integer_labels_and_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text("id,a,y\n10,0.5,2\n11,0.1,10\n")
    data = CsvSource(path, "y", row_id_column="id").load()
    assert data.labels.tolist() == [2, 10] and len(data.class_names) == 11
    assert data.row_ids.tolist() == [10, 11] and data.feature_names == ("a",)


@pytest.mark.parametrize(
    ("suffix", "opener"), [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)]
)
def test_csv_compressed_reads_as_plain(tmp_path: Path, suffix: str, opener) -> None:
    plain = tmp_path / "t.csv"
    plain.write_text(CSV)
    packed = tmp_path / f"t.csv{suffix}"
    with opener(packed, "wt") as fh:
        fh.write(CSV)
    cols = {"label_column": "label", "split_column": "fold"}
    a, b = CsvSource(plain, **cols).load(), CsvSource(packed, **cols).load()
    assert b.features.tolist() == a.features.tolist() and b.labels.tolist() == a.labels.tolist()
    assert b.name == a.name == "t/train"  # named like the plain file, without ".csv"
    spec = {"source": "csv", "path": str(packed), **cols}
    assert open_source(spec).load().labels.tolist() == a.labels.tolist()


def test_csv_compressed_bad_archive_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_text(CSV)  # plain text under a .gz name
    with pytest.raises(DataError, match=r"t\.csv\.gz: cannot read gzip-compressed CSV"):
        CsvSource(path, "label").load()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(CSV.encode())[:-12])  # truncated download
    with pytest.raises(DataError, match="cannot read gzip-compressed CSV"):
        CsvSource(cut, "label").load()


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "empty file"),
        ("a,label\n", {}, "no data rows"),
        ("a,b\n1,2\n", {}, "label column 'label' not found"),
        ("a,label\n1,x\noops,y\n", {}, "column 'a', row 1 \\(line 3\\): 'oops' is not a number"),
        ("a,label\n1,x\nnan,y\n", {}, "column 'a', row 1 \\(line 3\\): value is nan"),
        ("a,label\n1,x\n,y\n", {}, "column 'a', row 1 \\(line 3\\): empty value"),
        ("a,label\n1,x\n2\n", {}, "row 1 \\(line 3\\) has 1 fields"),
        ("a,label\n1,x\n2,\n", {}, "row 1: missing label"),
        ("a,label\n1,x\n", {"feature_columns": ["b"]}, "feature column 'b' not found"),
        ("a,label\n1,x\n", {"class_names": ["y"]}, "row 0: label 'x' is not one of"),
        ("a,label,s\n1,x,train\n", {"split_column": "s"}, "no rows with 's' == 'test'"),
    ],
)
def test_csv_rejects_bad_files(tmp_path: Path, text: str, kwargs: dict, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    split = "test" if "split_column" in kwargs else "train"
    with pytest.raises(DataError, match=rf"bad\.csv: .*{message}"):
        CsvSource(path, "label", **kwargs).load(split)


def test_parquet_reads_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"f1": [0.5, 1.5, 2.5], "f2": [1, 2, 3], "y": ["b", "a", "b"], "note": ["", None, "z"]}),
        path,
    )  # fmt: skip
    data = ParquetSource(path, "y", feature_columns=["f1", "f2"]).load()
    assert data.class_names == ("a", "b") and data.labels.tolist() == [1, 0, 1]
    assert data.features.dtype == np.float32 and data.features[:, 1].tolist() == [1, 2, 3]
    with pytest.raises(DataError, match=r"t\.parquet: column 'note', row 0: empty value"):
        ParquetSource(path, "y").load()
    bad = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"f": [1.0, None], "y": [0, 1]}), bad)
    with pytest.raises(DataError, match=r"nulls\.parquet: column 'f', row 1: empty value"):
        ParquetSource(bad, "y").load()
    words = tmp_path / "words.parquet"
    pq.write_table(pa.table({"f": ["1.0", "two"], "y": [0, 1]}), words)
    with pytest.raises(DataError, match=r"words\.parquet: column 'f', row 1: 'two' is not a"):
        ParquetSource(words, "y").load()
    with pytest.raises(DataError, match=r"t\.parquet: label column 'label' not found"):
        ParquetSource(path, "label").load()
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read Parquet"):
        ParquetSource(junk, "y").load()


# open_source and plugins ---------------------------------------------------------------------


def test_open_source_builds_each_kind(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    save_npz(sample(), tmp_path / "o.npz")
    assert isinstance(open_source({"source": "digits"}), Digits)
    csv = open_source(
        {"source": "csv", "path": "t.csv", "label_column": "label", "split_column": "fold"},
        base_dir=tmp_path,
    )
    assert len(csv.load("train")) == 2
    assert len(open_source({"source": "npz", "path": str(tmp_path / "o.npz")}).load()) == 6


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "sql"}, r"data\.source: unknown data source 'sql'"),
        ({}, r"data\.source: required"),
        ({"source": "csv", "path": "x.csv"}, r"data\.label_column: required by source 'csv'"),
        ({"source": "csv", "path": "x", "label_column": "y", "colour": 1}, r"data\.colour: unknown field"),
        ({"source": "digits", "path": "x"}, r"data\.path: unknown field for source 'digits'"),
        ({"source": "npz", "path": 3}, r"data\.path: must be a file path"),
        ({"source": "csv", "path": "x", "label_column": "y", "feature_columns": "a"}, r"data\.feature_columns"),
        ({"source": "csv", "path": "x", "label_column": "y", "class_names": ["a", "a"]}, r"data\.class_names"),
    ],
)  # fmt: skip
def test_open_source_rejects_bad_specs(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(spec)


def test_register_source_and_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fixed:
        def __init__(self, n: int = 3) -> None:
            self.name, self.n = "fixed", n

        def load(self, split: str = "train") -> LabeledData:
            return sample(self.n)

    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))
    register_source("fixed", Fixed)
    assert len(open_source({"source": "fixed", "n": 4}).load()) == 4
    with pytest.raises(ValueError, match="already registered"):
        register_source("fixed", Digits)

    class EntryPoint:
        name = "from_plugin"

        def load(self) -> type:
            return Fixed

    import importlib.metadata

    monkeypatch.setattr(registry_mod._PLUGINS, "loaded", False)
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [EntryPoint()] if group == "mycroft.data_sources" else [],
    )
    assert "from_plugin" in available_sources()
    assert len(open_source({"source": "from_plugin"}).load()) == 3
