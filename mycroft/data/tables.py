"""CSV and Parquet tables: one row per example, one label column, numeric feature columns.

Splits: a table is one split, "train", unless `split_column` is given; then each distinct
value of that column is a split (e.g. "train"/"test") and `load(split)` keeps those rows.
Labels are encoded over the whole file first, so class indices agree between splits.
Row ids come from `row_id_column` when given, else the row's 0-based position in the file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from mycroft.data._checks import as_class_names, check_row_ids, encode_labels
from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa

Column = list[object] | np.ndarray


def _where(i: int, line_offset: int | None) -> str:
    return f"row {i}" + (f" (line {i + line_offset})" if line_offset is not None else "")


def _to_float(path: Path, col: str, values: Column, line_offset: int | None) -> np.ndarray:
    """A numeric column as float32; the first bad cell is reported by column and row."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biuf":
        out = arr.astype(np.float64)
    else:
        # None (a Parquet null) and "" would silently become NaN or fail vaguely: name them.
        for i, v in enumerate(values):
            if v is None or v == "":
                raise DataError(f"{path}: column {col!r}, {_where(i, line_offset)}: empty value")
        try:
            out = np.asarray(values, dtype=np.float64)  # parses numeric strings in one pass
        except (ValueError, TypeError):
            for i, v in enumerate(values):
                try:
                    float(v)  # type: ignore[arg-type]
                except (ValueError, TypeError):
                    raise DataError(
                        f"{path}: column {col!r}, {_where(i, line_offset)}: {v!r} is not a number"
                    ) from None
            raise
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: column {col!r}, {_where(i, line_offset)}: value is {out[i]}")
    return out.astype(np.float32)


# Compressed CSV by file suffix; the name is what the error says when the file is not that.
_OPENERS = {".gz": (gzip.open, "gzip"), ".bz2": (bz2.open, "bzip2"), ".xz": (lzma.open, "xz")}
_ARROW_CODECS = {".gz": "gzip", ".bz2": "bz2"}  # pyarrow's names for the same codecs


class _TableSource:
    """Shared logic; subclasses implement `_read` returning columns in file order."""

    kind = "table"
    line_offset: int | None = None  # data row i is on line i + offset (CSV only)

    def __init__(
        self,
        path: str | os.PathLike[str],
        label_column: str,
        feature_columns: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        split_column: str | None = None,
        row_id_column: str | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"path: must be a file path, got {type(path).__name__}")
        for field, value in (
            ("label_column", label_column),
            ("split_column", split_column),
            ("row_id_column", row_id_column),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{field}: must be a column name (a non-empty string)")
        if feature_columns is not None and (
            isinstance(feature_columns, str)
            or not all(isinstance(c, str) and c for c in feature_columns)
            or len(feature_columns) == 0
        ):
            raise ConfigError("feature_columns: must be a non-empty list of column names")
        self.path = Path(path).expanduser()
        self.label_column = label_column
        self.feature_columns = tuple(feature_columns) if feature_columns is not None else None
        self.class_names = as_class_names(class_names, "class_names")
        self.split_column = split_column
        self.row_id_column = row_id_column
        # "owners.csv.gz" is named "owners", as "owners.csv" is.
        stem = self.path.stem
        self.name = name or (Path(stem).stem if self.path.suffix in _OPENERS else stem)
        self._columns: dict[str, Column] | None = None

    def _read(self) -> dict[str, Column]:
        raise NotImplementedError

    def _table(self) -> dict[str, Column]:
        if self._columns is None:
            if not self.path.is_file():
                raise DataError(f"{self.path}: {self.kind} file not found")
            columns = self._read()
            if not columns:
                raise DataError(f"{self.path}: empty file (no header)")
            if len(next(iter(columns.values()))) == 0:
                raise DataError(f"{self.path}: no data rows")
            self._columns = columns
        return self._columns

    def _column(self, columns: dict[str, Column], col: str, role: str) -> Column:
        if col not in columns:
            raise DataError(
                f"{self.path}: {role} column {col!r} not found (columns: {list(columns)})"
            )
        return columns[col]

    def _split_values(self, columns: dict[str, Column]) -> list[str]:
        assert self.split_column is not None
        raw = self._column(columns, self.split_column, "split")
        return ["" if v is None else str(v).strip() for v in list(raw)]

    @property
    def splits(self) -> tuple[str, ...]:
        if self.split_column is None:
            return ("train",)
        return tuple(sorted(set(self._split_values(self._table()))))

    def load(self, split: str = "train") -> LabeledData:
        columns = self._table()
        labels_raw = self._column(columns, self.label_column, "label")
        labels_list = list(labels_raw) if isinstance(labels_raw, np.ndarray) else labels_raw
        for i, v in enumerate(labels_list):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                raise DataError(
                    f"{self.path}: column {self.label_column!r}, "
                    f"{_where(i, self.line_offset)}: missing label"
                )
        labels, class_names = encode_labels(
            labels_raw
            if isinstance(labels_raw, np.ndarray)
            else np.asarray([str(v) for v in labels_list]),
            self.class_names,
            f"{self.path}: column {self.label_column!r}",
        )
        reserved = {self.label_column, self.split_column, self.row_id_column}
        feature_cols = self.feature_columns or tuple(c for c in columns if c not in reserved)
        if not feature_cols:
            raise DataError(f"{self.path}: no feature columns besides the label column")
        features = np.stack(
            [
                _to_float(self.path, c, self._column(columns, c, "feature"), self.line_offset)
                for c in feature_cols
            ],
            axis=1,
        )
        n = len(labels)
        if self.row_id_column is not None:
            raw_ids = np.asarray(self._column(columns, self.row_id_column, "row id"))
            try:
                raw_ids = raw_ids.astype(np.int64) if raw_ids.dtype.kind in "USO" else raw_ids
            except (ValueError, TypeError):
                raise DataError(
                    f"{self.path}: column {self.row_id_column!r} holds non-integer row ids"
                ) from None
            row_ids = check_row_ids(raw_ids, n, f"{self.path}: column {self.row_id_column!r}")
        else:
            row_ids = np.arange(n, dtype=np.int64)
        if self.split_column is None:
            if split != "train":
                raise DataError(
                    f"{self.path}: no split {split!r}: without split_column a table has "
                    "only the split 'train'"
                )
            keep = np.ones(n, dtype=bool)
        else:
            values = np.asarray(self._split_values(columns))
            keep = values == split
            if not keep.any():
                raise DataError(
                    f"{self.path}: no rows with {self.split_column!r} == {split!r} "
                    f"(values: {sorted(set(values.tolist()))})"
                )
        return LabeledData(
            features=features[keep],
            labels=labels[keep],
            class_names=class_names,
            row_ids=row_ids[keep],
            name=f"{self.name}/{split}",
            feature_names=tuple(feature_cols),
        )


# Tests set this False to check that the stdlib reader (used where pyarrow, the optional extra
# `mycroft[parquet]`, is missing) gives the same columns and errors as the pyarrow one.
USE_PYARROW = True
# pyarrow raises these for files it cannot parse; the stdlib reader then names the problem.
_STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError, csv.Error)


def _text_or_numbers(column: pa.ChunkedArray, keep_text: bool) -> Column:
    """A pyarrow text column as the base class takes it: float64 when pyarrow parses every cell
    as a number, else the stripped strings the stdlib reader gives. pyarrow refuses the few
    forms numpy accepts (padding, "1_0", non-ASCII digits), so numpy still decides those."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not keep_text:
        try:
            return pc.cast(column, pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            pass
    return [v.strip() for v in column.to_pylist()]


class CsvSource(_TableSource):
    """A CSV file with a header row; `.csv.gz`, `.csv.bz2` and `.csv.xz` are read as such.

    pyarrow parses it when installed: on a 10,000 x 784 numeric table, 1.3 s and 222 MiB
    against 8.3 s and 537 MiB with the csv module, which makes a Python string per cell
    (`make bench-ecosystem`). Its
    answer equals the stdlib reader's, which still decides every error message: a file pyarrow
    refuses is read again by the stdlib reader.
    """

    kind = "CSV"
    line_offset = 2  # line 1 is the header

    def _read(self) -> dict[str, Column]:
        columns = self._read_pyarrow() if USE_PYARROW else None
        return self._read_stdlib() if columns is None else columns

    def _open_text(self) -> TextIO:
        opener, _ = _OPENERS.get(self.path.suffix, (open, None))
        # "utf-8-sig": a byte-order mark (Excel writes one) is not part of the first name.
        return opener(self.path, "rt", newline="", encoding="utf-8-sig")

    def _read_stdlib(self) -> dict[str, Column]:
        try:
            with self._open_text() as fh:
                rows = list(csv.reader(fh))
        except _STREAM_ERRORS as exc:
            # gzip.BadGzipFile is an OSError; a truncated archive raises EOFError.
            codec = _OPENERS.get(self.path.suffix, (None, None))[1]
            what = "CSV" if codec is None else f"{codec}-compressed CSV"
            raise DataError(f"{self.path}: cannot read {what} ({exc})") from None
        rows = [r for r in rows if r]  # blank lines carry no row
        if not rows:
            return {}
        header = self._check_header(rows[0])
        body = rows[1:]
        for i, r in enumerate(body):
            if len(r) != len(header):
                raise DataError(
                    f"{self.path}: {_where(i, self.line_offset)} has {len(r)} fields, "
                    f"the header has {len(header)}"
                )
        return {h: [r[j].strip() for r in body] for j, h in enumerate(header)}

    def _check_header(self, names: list[str]) -> list[str]:
        header = [h.strip() for h in names]
        if len(set(header)) != len(header):
            raise DataError(f"{self.path}: duplicate column names in header {header}")
        return header

    def _read_pyarrow(self) -> dict[str, Column] | None:
        """The columns, or None when pyarrow is missing or refuses the file."""
        try:
            import pyarrow as pa
            import pyarrow.csv as pacsv
        except ImportError:
            return None
        try:  # the header's width, so that every column can be declared text
            with self._open_text() as fh:
                first = next((r for r in csv.reader(fh) if r), None)
        except _STREAM_ERRORS:
            return None
        if first is None:
            return None
        names = [f"c{j}" for j in range(len(first))]
        try:
            # The same decompression as the stdlib reader's, by suffix only (pyarrow would also
            # guess .zst or .lz4); pyarrow has no xz decoder, so lzma feeds it.
            with (
                lzma.open(self.path)
                if self.path.suffix == ".xz"
                else pa.input_stream(
                    str(self.path), compression=_ARROW_CODECS.get(self.path.suffix)
                )
            ) as stream:
                table = pacsv.read_csv(
                    stream,
                    # The header is read as row 0 and every cell as text, as the csv module
                    # does: typed inference would turn "true" or "2024-01-01" into values.
                    read_options=pacsv.ReadOptions(column_names=names),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict.fromkeys(names, pa.string())
                    ),
                )
        except (pa.ArrowException, *_STREAM_ERRORS):
            return None  # ragged rows, bad bytes, bad archives: the stdlib reader says which
        header = self._check_header([col[0].as_py() for col in table.columns])
        body = table.slice(1)
        text_columns = {self.label_column, self.split_column, self.row_id_column}
        return {
            name: _text_or_numbers(col, keep_text=name in text_columns)
            for name, col in zip(header, body.columns, strict=True)
        }


class ParquetSource(_TableSource):
    """A Parquet file read with pyarrow; numeric columns stay numeric, nulls are rejected."""

    kind = "Parquet"

    def _read(self) -> dict[str, Column]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ModuleNotFoundError as exc:
            if exc.name != "pyarrow":  # pyarrow is there but broken: not a missing extra
                raise
            raise DataError(
                f"{self.path}: reading Parquet needs pyarrow: pip install 'mycroft[parquet]'"
            ) from None
        try:
            table = pq.read_table(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.path}: cannot read Parquet ({exc})") from None
        columns: dict[str, Column] = {}
        for name, col in zip(table.column_names, table.columns, strict=True):
            t = col.type
            numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            # Nulls become None, reported by row only if the column is used.
            columns[name] = col.to_numpy() if numeric and not col.null_count else col.to_pylist()
        return columns


SOURCES = {"csv": CsvSource, "parquet": ParquetSource}  # found by mycroft.data.registry
