"""A CSV row never takes other rows or values with it unsaid.

A quote never closed read every following line into one field (the rows after it vanished,
one "row" sent); a value past the header's last column was dropped. Both are bad rows now,
named with their lines, and a run refuses them before sending.
"""

from __future__ import annotations

import csv
from pathlib import Path

from llmbatch import BatchResult, CompletionResponse
from llmbatch.io.formats import BadLine, InputItem, read_rows
from llmbatch.io.journal import result_line
from llmbatch.types import CompletionRequest

from .helpers import cli, read_out


def rows_of(path: Path) -> list[InputItem | BadLine]:
    return list(read_rows("T: {title}", path, "id", CompletionRequest(prompt="")))


def test_a_quote_never_closed_is_a_bad_row_naming_the_lines_it_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,title\na,First\nb,"Second\nc,Third\nd,Fourth\n')
    items = rows_of(path)
    assert [i.id for i in items if isinstance(i, InputItem)] == ["a"]
    assert [str(i) for i in items if isinstance(i, BadLine)] == [
        "row 2: a quote opened here is never closed (lines 3-5, to the end of the file)"
    ]


def test_a_quote_closed_then_followed_by_text_names_its_lines_and_reading_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,title\na,"First\nb,Second\nc,"Third" x\nd,Fourth\n')
    items = rows_of(path)
    bad = [str(i) for i in items if isinstance(i, BadLine)]
    assert len(bad) == 1 and bad[0].startswith("row 1: malformed CSV (lines 2-4): ")
    assert [i.id for i in items if isinstance(i, InputItem)] == ["d"]


def test_a_value_past_the_last_column_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,title\na,First,extra\nb,Second,\nc,"Third\nmore",x,y\n')
    items = rows_of(path)
    assert [str(i) for i in items if isinstance(i, BadLine)] == [
        "row 1: 3 fields, but the header names 2 (line 2)",
        "row 3: 4 fields, but the header names 2 (lines 4-5)",
    ]
    # an empty trailing field ("b,Second,") loses nothing
    assert [i.id for i in items if isinstance(i, InputItem)] == ["b"]


def test_a_run_refuses_them_before_sending(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    rows, out = tmp_path / "rows.csv", tmp_path / "out.jsonl"
    rows.write_text('id,title\nk1,"First\nk2,Second\nk3,Third,surplus\n')
    args = [
        "run", "--template", "T: {title}", "--rows", str(rows), "-o", str(out),
        "--base-url", sim.url + "/v1", "--model", "sim", "--no-progress",
    ]  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "row 1: a quote opened here is never closed (lines 2-4" in proc.stderr
    assert sim.stats()["received"] == 0
    # Fixed, the three rows are three requests.
    rows.write_text('id,title\nk1,"First"\nk2,Second\nk3,"Third,surplus"\n')
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == ["k1", "k2", "k3"]


def test_export_join_names_them_too(tmp_path: Path) -> None:
    # The join read the same file the same lenient way: rows vanished from the table unsaid.
    out, rows, table = tmp_path / "out.jsonl", tmp_path / "rows.csv", tmp_path / "t.csv"
    out.write_bytes(
        b"".join(
            result_line(BatchResult(r, response=CompletionResponse("x"), attempts=1))
            for r in ("k1", "k2", "k4")
        )
    )
    rows.write_text('id,title\nk1,First,surplus\nk2,Second\nk3,"Third\nk4,Fourth\n')
    proc = cli("export", str(out), "-o", str(table), "--join", str(rows))
    assert proc.returncode == 0, proc.stderr
    assert (
        f"{rows}: row 1: 3 fields, but the header names 2; the values past the last column "
        "are not in the table (and 1 more)"
    ) in proc.stderr
    with open(table, newline="") as f:
        got = [(r["id"], r["title"]) for r in csv.DictReader(f)]
    assert got == [("k1", "First"), ("k2", "Second"), ("k4", "")]  # k4: its result, no row
