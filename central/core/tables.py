"""Bytes of an uploaded spreadsheet → rows of text with their source line numbers.

Pure: the caller passes the bytes and the file's name. XLSX is recognised by content (a
zip) and read through openpyxl (first sheet, cached values, never formulas); anything else
is CSV in UTF-8 (with or without BOM), UTF-16 with a BOM (Excel's "Unicode text"), or
else GB18030 — a superset of GBK and GB2312, so a file from a Chinese Windows Excel reads
as is. The delimiter is a comma, a tab or a semicolon, whichever the first line has most of.

A file that is not a readable table is never an exception: :func:`read_table` returns a
:class:`Table` with ``problem`` set, so a bad upload cannot crash its caller (brief,
invariant 6).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import warnings
import zipfile
from datetime import date, datetime, time
from decimal import Decimal
from typing import Literal

from msgspec import Struct

#: Most data rows in one file; more is refused as a whole (split the file).
MAX_ROWS = 1_000_000
#: Most bytes an XLSX may unpack to (a zip bomb is refused before openpyxl sees it).
MAX_XLSX_UNPACKED = 512 * 1024 * 1024

Format = Literal["csv", "xlsx"]
ProblemCode = Literal["file_unreadable", "encoding_unknown", "too_many_rows"]

_XLSX_MAGIC = b"PK\x03\x04"
_XLS_MAGIC = b"\xd0\xcf\x11\xe0"  # OLE2: the old binary .xls


class Row(Struct, frozen=True, array_like=True):
    """A non-blank row: its 1-based line (CSV; where a quoted multi-line record starts) or
    row number (XLSX), and its cells with surrounding whitespace stripped."""

    line: int
    cells: tuple[str, ...]


class TableProblem(Struct, frozen=True, kw_only=True):
    """Why a file is not a readable table (``line`` 0: the file as a whole)."""

    code: ProblemCode
    message: str
    line: int = 0


class Table(Struct, frozen=True, kw_only=True):
    """What :func:`read_table` read. ``encoding`` names the codec a CSV was decoded with
    (``utf-8``, ``utf-8-sig`` = with BOM, ``utf-16``, ``gb18030``; None for XLSX). With
    ``problem`` set the file could not be read, and ``rows`` is empty."""

    filename: str
    format: Format
    encoding: str | None = None
    rows: tuple[Row, ...] = ()
    problem: TableProblem | None = None


def read_table(data: bytes, filename: str) -> Table:
    """The non-blank rows of a CSV or XLSX file, told apart by content (not by name)."""
    if data.startswith(_XLSX_MAGIC):
        return _read_xlsx(data, filename)
    if data.startswith(_XLS_MAGIC):
        return _unreadable(filename, "xlsx", "an old binary .xls: save it as .xlsx or CSV")
    return _read_csv(data, filename)


def _unreadable(
    filename: str,
    fmt: Format,
    message: str,
    *,
    code: ProblemCode = "file_unreadable",
    line: int = 0,
    encoding: str | None = None,
) -> Table:
    problem = TableProblem(code=code, message=message, line=line)
    return Table(filename=filename, format=fmt, encoding=encoding, problem=problem)


def _too_many(filename: str, fmt: Format, encoding: str | None) -> Table:
    message = f"more than {MAX_ROWS} rows: split the file"
    return _unreadable(filename, fmt, message, code="too_many_rows", encoding=encoding)


def decode_text(data: bytes) -> tuple[str, str] | TableProblem:
    """A CSV's bytes as text and the codec that read them (see :class:`Table`'s
    ``encoding``): UTF-8 or UTF-16 after their BOM, else UTF-8, else GB18030. Bytes that
    none of these reads are an ``encoding_unknown`` problem naming the first bad line."""
    candidates: tuple[str, ...]
    if data.startswith(codecs.BOM_UTF8):
        encoding, body, candidates = "utf-8-sig", data[len(codecs.BOM_UTF8) :], ("utf-8",)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, body, candidates = "utf-16", data, ("utf-16",)
    else:
        encoding, body, candidates = "", data, ("utf-8", "gb18030")
    first_bad = 0
    for codec in candidates:
        try:
            text = body.decode(codec)
        except UnicodeDecodeError as exc:
            first_bad = max(first_bad, exc.start)
            continue
        return text, encoding or codec
    line = body[:first_bad].count(b"\n") + 1
    names = " nor ".join(c.upper() for c in candidates)
    return TableProblem(
        code="encoding_unknown",
        message=f"the file is {'neither ' if len(candidates) > 1 else 'not valid '}{names} "
        f"text (an undecodable byte on line {line})",
        line=line,
    )


def _delimiter(text: str) -> str:
    """Comma, tab or semicolon: whichever one of the first lines (a title, then the header)
    has most of; a comma if none has any."""
    lines = [line for line in text[:65536].splitlines()[:20] if line.strip()][:10]
    counts = {d: max((line.count(d) for line in lines), default=0) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_csv(data: bytes, filename: str) -> Table:
    decoded = decode_text(data)
    if isinstance(decoded, TableProblem):
        return Table(filename=filename, format="csv", problem=decoded)
    text, encoding = decoded
    if "\x00" in text:
        message = "the text holds NUL characters (UTF-16 without a BOM?)"
        return _unreadable(filename, "csv", message, encoding=encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    rows: list[Row] = []
    start = 1
    try:
        for cells in reader:
            stripped = tuple(cell.strip() for cell in cells)
            if any(stripped):
                if len(rows) == MAX_ROWS:
                    return _too_many(filename, "csv", encoding)
                rows.append(Row(start, stripped))
            start = reader.line_num + 1
    except csv.Error as exc:
        return _unreadable(
            filename, "csv", f"not valid CSV: {exc}", line=reader.line_num, encoding=encoding
        )
    return Table(filename=filename, format="csv", encoding=encoding, rows=tuple(rows))


def _read_xlsx(data: bytes, filename: str) -> Table:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    # NotImplementedError: a zip of a later version or an unknown method (found by fuzzing).
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError) as exc:
        return _unreadable(filename, "xlsx", f"not a readable XLSX workbook: {exc}")
    if unpacked > MAX_XLSX_UNPACKED:
        return _unreadable(filename, "xlsx", f"the workbook unpacks to {unpacked} bytes")
    # Deferred: only an XLSX pays for importing openpyxl.
    import openpyxl  # noqa: PLC0415
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet  # noqa: PLC0415

    rows: list[Row] = []
    # openpyxl warns about styles and extensions it skips, which say nothing about the data.
    # (catch_warnings is process-wide; it only ever silences, for the length of a read.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            try:
                sheet = book.worksheets[0] if book.worksheets else None
                if not isinstance(sheet, ReadOnlyWorksheet):
                    return _unreadable(filename, "xlsx", "the workbook has no worksheet")
                sheet.reset_dimensions()  # some exporters write wrong ones: read what is there
                for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
                    cells = tuple(xlsx_text(value) for value in values)
                    if any(cells):
                        if len(rows) == MAX_ROWS:
                            return _too_many(filename, "xlsx", None)
                        rows.append(Row(number, cells))
            finally:
                book.close()
        except Exception as exc:  # noqa: BLE001 - openpyxl raises anything (KeyError, XML
            # ParseError, TypeError …) for a damaged file; each means "unreadable".
            return _unreadable(filename, "xlsx", f"not a readable XLSX workbook: {exc!r}")
    return Table(filename=filename, format="xlsx", rows=tuple(rows))


def xlsx_text(value: object) -> str:
    """An XLSX cell value as the text a CSV export of it would hold: whole numbers without
    ``.0``, other numbers through their shortest repr (the figure the sheet shows; never
    float arithmetic), dates as ``YYYY-MM-DD`` (``YYYY-MM-DD HH:MM:SS`` with a time)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        if not math.isfinite(value):
            return repr(value)
        return format(Decimal(repr(value)), "f")
    if isinstance(value, datetime):
        if value.time() == time(0):
            return value.date().isoformat()
        return value.replace(microsecond=0, tzinfo=None).isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    return str(value).strip()
