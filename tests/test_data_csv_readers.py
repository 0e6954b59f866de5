"""The pyarrow CSV reader and the stdlib one (used where pyarrow is not installed) agree.

Every file here is loaded twice, once through each reader, and must give the same features,
labels, class names, row ids and feature names, or the same error.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mycroft.data import CsvSource
from mycroft.data import tables as tables_mod
from mycroft.errors import DataError

Outcome = tuple


def _outcome(path: Path, **kwargs: object) -> Outcome:
    try:
        d = CsvSource(path, "label", **kwargs).load()
    except DataError as exc:
        return ("error", str(exc))
    return (
        "data",
        d.features.dtype.str,
        d.features.shape,
        d.features.tobytes(),  # bit for bit: -0.0 and the last digit of a float count
        d.labels.tolist(),
        d.class_names,
        d.row_ids.tolist(),
        d.feature_names,
        d.name,
    )


def _both(monkeypatch: pytest.MonkeyPatch, path: Path, **kwargs: object) -> tuple[Outcome, Outcome]:
    monkeypatch.setattr(tables_mod, "USE_PYARROW", True)
    fast = _outcome(path, **kwargs)
    monkeypatch.setattr(tables_mod, "USE_PYARROW", False)
    return fast, _outcome(path, **kwargs)


# name -> (file text, CsvSource arguments besides label_column="label")
CASES: dict[str, tuple[str | bytes, dict]] = {
    "quoted fields": ('a,"b c",label\n1,"2",x\n"3", 4 ,"y, z"\n', {}),
    "CRLF": ("a,label\r\n1,x\r\n2,y\r\n", {}),
    "CR only": ("a,label\r1,x\r2,y\r", {}),
    "blank lines": ("\n\na,label\n\n1,x\n\n\n2,y\n\n", {}),
    "no final newline": ("a,label\n1,x", {}),
    "newline in a quoted label": ('a,label\n1,"a\r\nb"\n2,y\n', {}),
    "doubled quotes": ('a,label\n1,"he said ""hi"""\n', {}),
    "quote inside a field": ('a,label\n1,a"b\n2,"ab"cd\n', {}),
    "unterminated quote": ('a,label\n1,"ab\n2,y\n', {}),
    "numbers": ("a,b,c,label\n1e-3,-0,0001,x\n+.5,1E+05,1e-400,y\n", {}),
    "padded and unicode numbers": ("a,b,label\n 1 ,\uff11,x\n\t2\u3000,1_0,y\n", {}),
    "float digits": ("a,label\n0.1,x\n2.2250738585072014e-308,y\n3.4028235e38,x\n", {}),
    "integer labels": ("a,label\n1,2\n2,10\n", {}),
    "labels with spaces": ('a,label\n1, x\n2,x \n3," y"\n', {}),
    "byte-order mark": ("\ufeffa,label\n1,x\n", {}),
    "NUL in a label": ("a,label\n1,x\x00\n", {}),
    "splits and row ids": (
        "id,a,label,fold\n7,1,x,train\n3, 2 ,y,test\n9,3,x,train\n",
        {"split_column": "fold", "row_id_column": "id"},
    ),
    "label is also a feature": ("label,a\n1,2\n3,4\n", {"feature_columns": ["label", "a"]}),
    "chosen features skip text": ("a,note,label\n1,hi,x\n", {"feature_columns": ["a"]}),
    # errors
    "empty file": ("", {}),
    "blank lines only": ("\n\r\n\n", {}),
    "header only": ("a,label\n\n", {}),
    "duplicate names": ("a,a ,label\n1,2,x\n", {}),
    "short row": ("a,label\n1,x\n2\n", {}),
    "long row after a blank line": ("a,label\n\n1,x,3\n", {}),
    "space before a quote": ('a,label\n1, "x,y"\n', {}),
    "whitespace line": ("a,label\n1,x\n   \n", {}),
    "empty cell": ("a,label\n1,x\n,y\n", {}),
    "blank cell": ("a,label\n1,x\n \t,y\n", {}),
    "words": ("a,b,label\n1,true,x\n2,NA,y\n", {}),
    "dates": ("a,label\n2024-01-01,x\n", {}),
    "hex": ("a,label\n0x10,x\n", {}),
    "nan": ("a,label\n1,x\nnan,y\n", {}),
    "overflow": ("a,label\n1e400,x\n", {}),
    "missing label": ("a,label\n1,x\n2,\n", {}),
    "trailing comma": ("a,label,\n1,x,\n", {}),
    "not utf-8": (b"a,label\n1,\xff\n", {}),
    "latin-1 header": (b"\xe9,label\n1,x\n", {}),
}
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
}


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
@pytest.mark.parametrize("case", list(CASES))
def test_readers_agree_on_varied_files(tmp_path, monkeypatch, case: str, suffix: str) -> None:
    text, kwargs = CASES[case]
    raw = text if isinstance(text, bytes) else text.encode()
    path = tmp_path / f"t.csv{suffix}"
    path.write_bytes(COMPRESSORS[suffix](raw))
    fast, stdlib = _both(monkeypatch, path, **kwargs)
    assert fast == stdlib


def test_readers_agree_on_bad_archives(tmp_path, monkeypatch) -> None:
    csv = b"a,label\n1,x\n"
    (tmp_path / "plain.csv.gz").write_bytes(csv)
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(csv)[:-12])
    (tmp_path / "cut.csv.xz").write_bytes(lzma.compress(csv)[:-12])
    (tmp_path / "plain.csv.bz2").write_bytes(csv)
    for path in sorted(tmp_path.iterdir()):
        fast, stdlib = _both(monkeypatch, path)
        assert fast[0] == "error" and "compressed CSV" in fast[1]
        assert fast == stdlib


def _random_csv(rng: random.Random) -> str:
    """Rows of mostly the right width, from cells chosen to trip a parser up."""
    numbers = ["1", "-0", "2.5", "1e-3", " 4 ", '"5"', "1_0", "nan", "", "x", "007", "1E5"]
    labels = ["a", " b", '"c,d"', '"e ""q"""', "1", "10", '"two\nlines"', "", "a\x00"]
    width = rng.randint(1, 4)
    lines = [",".join(["label", *(f"f{j}" for j in range(width))])]
    for _ in range(rng.randint(0, 8)):
        cells = [rng.choice(labels)]
        for _ in range(width):
            if rng.random() < 0.6:
                cells.append(repr(rng.uniform(-1e6, 1e6)))
            else:
                cells.append(rng.choice(numbers))
        if rng.random() < 0.03:
            cells.append("1")  # a row too long
        elif rng.random() < 0.03:
            cells.pop()  # a row too short
        lines.append(",".join(cells))
        if rng.random() < 0.1:
            lines.append("")
    text = "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines)
    return text.rstrip("\r\n") if rng.random() < 0.3 else text


def test_readers_agree_on_random_files(tmp_path, monkeypatch) -> None:
    rng = random.Random(20240611)
    kinds = {"data": 0, "error": 0}
    for i in range(300):
        path = tmp_path / f"r{i}.csv"
        path.write_bytes(_random_csv(rng).encode())
        fast, stdlib = _both(monkeypatch, path)
        assert fast == stdlib, path.read_bytes()
        kinds[fast[0]] += 1
    assert kinds["data"] > 50 and kinds["error"] > 50  # both outcomes were really compared


def test_pyarrow_reads_well_formed_files_itself(tmp_path, monkeypatch) -> None:
    """The agreement above must not come from pyarrow handing every file to the stdlib."""

    def refuse(self: CsvSource) -> None:
        raise AssertionError("the stdlib reader was used")

    monkeypatch.setattr(CsvSource, "_read_stdlib", refuse)
    path = tmp_path / "t.csv.xz"
    path.write_bytes(lzma.compress(b'a,b,label\r\n1e-3," 2",x\r\n\r\n4,5,"y,\nz"\r\n'))
    data = CsvSource(path, "label").load()
    assert data.features.tolist() == [[np.float32(1e-3), 2.0], [4.0, 5.0]]
    assert data.class_names == ("x", "y,\nz") and data.name == "t/train"


def test_without_pyarrow_the_stdlib_reader_answers(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)  # import raises ImportError
    path = tmp_path / "t.csv"
    path.write_text("\ufeffa,label\n1,x\n2,y\n")
    data = CsvSource(path, "label").load()
    assert data.feature_names == ("a",) and data.labels.tolist() == [0, 1]
    path.write_text("a,label\n1,x\n2\n")
    with pytest.raises(DataError, match=r"t\.csv: row 1 \(line 3\) has 1 fields"):
        CsvSource(path, "label").load()
