"""`export --join` of a CSV that is not UTF-8: read by its byte-order mark, else refused.

A UTF-16 file (Excel's "Unicode text") joined nothing: its header was read as UTF-8 bytes,
so no id matched and every result came out as a row "not in the input". A Latin-1 file had
each accented letter replaced by U+FFFD. Now a byte-order mark names the encoding, and a file
without one that is not UTF-8 is refused, naming the file, the line and the byte.
"""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pytest

from llmbatch import BatchResult, CompletionResponse
from llmbatch.io.export import RowsEncodingError, csv_encoding
from llmbatch.io.journal import result_line

from .helpers import cli

ROWS = "id,name\nr1,Zoë\nr2,Ærøskøbing\n"


def write_output(path: Path) -> Path:
    lines = [
        result_line(
            BatchResult(rid, response=CompletionResponse("{}"), attempts=1, parsed={"v": v})
        )
        for v, rid in enumerate(("r1", "r2"), 1)
    ]
    path.write_bytes(b"".join(lines))
    return path


def read_table(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["id"], r["name"], r["out_v"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    "data",
    [
        ROWS.encode("utf-16"),  # with its mark, little-endian here
        codecs.BOM_UTF16_BE + ROWS.encode("utf-16-be"),
        codecs.BOM_UTF8 + ROWS.encode(),
        ROWS.encode("utf-32"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-8-sig", "utf-32"],
)
def test_a_csv_with_a_byte_order_mark_is_joined_in_its_encoding(
    tmp_path: Path, data: bytes
) -> None:
    out, rows, table = (
        write_output(tmp_path / "out.jsonl"),
        tmp_path / "rows.csv",
        tmp_path / "t.csv",
    )
    rows.write_bytes(data)
    proc = cli("export", str(out), "-o", str(table), "--join", str(rows))
    assert proc.returncode == 0, proc.stderr
    assert read_table(table) == [("r1", "Zoë", "1"), ("r2", "Ærøskøbing", "2")]
    assert "not in the input" not in proc.stderr


def test_a_latin1_csv_is_refused_naming_the_file_line_and_byte(tmp_path: Path) -> None:
    out, rows, table = (
        write_output(tmp_path / "out.jsonl"),
        tmp_path / "rows.csv",
        tmp_path / "t.csv",
    )
    rows.write_bytes(ROWS.encode("latin-1"))
    proc = cli("export", str(out), "-o", str(table), "--join", str(rows))
    assert proc.returncode == 2, proc.stderr
    assert f"{rows} is not valid UTF-8 (line 2, byte offset 13: byte 0xeb" in proc.stderr
    assert "Traceback" not in proc.stderr and not table.exists()
    with pytest.raises(RowsEncodingError) as caught:
        csv_encoding(rows)
    assert (caught.value.encoding, caught.value.line, caught.value.offset) == ("UTF-8", 2, 13)


def test_utf16_without_a_mark_is_refused_not_read_as_nul_filled_text(tmp_path: Path) -> None:
    out, rows, table = (
        write_output(tmp_path / "out.jsonl"),
        tmp_path / "rows.csv",
        tmp_path / "t.csv",
    )
    rows.write_bytes(ROWS.encode("utf-16-le"))
    proc = cli("export", str(out), "-o", str(table), "--rows", str(rows))
    assert proc.returncode == 2, proc.stderr
    assert "a NUL byte: UTF-16 or UTF-32 without a byte-order mark?" in proc.stderr
    assert not table.exists()


def test_a_utf16_file_cut_mid_character_is_refused_with_its_encoding(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_bytes(ROWS.encode("utf-16")[:-1])
    with pytest.raises(RowsEncodingError) as caught:
        csv_encoding(rows)
    assert caught.value.encoding == "UTF-16" and "rows.csv is not valid UTF-16" in str(caught.value)
