"""`llmbatch export --join/--rows` onto columnar inputs: Parquet (file and folder), Arrow IPC,
a Hugging Face dataset folder. The results come back in the input's order, next to its
columns, and a Parquet or Arrow export keeps the input's column types."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from .helpers import cli, read_out

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

T0 = dt.datetime(2026, 1, 2, 3, 4, 5)


def rows_table(n: int) -> Any:
    # Not in id order: the export follows the input, whatever its ids.
    ids = [(i * 7) % n for i in range(n)]
    return pa.table(
        {
            "doc": ids,
            "title": [f"paper {i}" for i in ids],
            "tags": [["a", str(i % 3)] for i in ids],
            "seen": [T0 + dt.timedelta(minutes=i) for i in ids],
            "meta": [{"lang": "en", "pages": i} for i in ids],
        }
    )


@pytest.fixture
def ran(tmp_path: Path, start_sim) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """A run over the first 20 of 25 rows (the other 5 have no result yet): (rows, output)."""
    sim = start_sim("--latency-ms", "2")
    rows, first, out = tmp_path / "rows.parquet", tmp_path / "first.parquet", tmp_path / "o.jsonl"
    pq.write_table(rows_table(25), rows, row_group_size=8)
    pq.write_table(rows_table(25).slice(0, 20), first)
    proc = cli(
        "run", "--template", "Summarize {title}", "--rows", str(first), "--id-field", "doc",
        "-o", str(out), "--base-url", sim.url + "/v1", "--model", "sim", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return rows, out


def test_join_onto_parquet_keeps_order_and_types(tmp_path: Path, ran: tuple[Path, Path]) -> None:
    rows, out = ran
    target = tmp_path / "labelled.parquet"
    # No --id-field: found from the values (the run used "doc").
    proc = cli("export", str(out), "-o", str(target), "--join", str(rows))
    assert proc.returncode == 0, proc.stderr
    assert "25 row(s)" in proc.stderr and "20 ok" in proc.stderr and "5 missing" in proc.stderr
    got = pq.read_table(target)
    source = rows_table(25)
    for name in ("doc", "title", "tags", "seen", "meta"):
        assert got.schema.field(name).type == source.schema.field(name).type, name
        assert got.column(name).to_pylist() == source.column(name).to_pylist(), name
    status = got.column("out_status").to_pylist()
    assert status == ["ok"] * 20 + ["missing"] * 5
    replies = got.column("out_reply").to_pylist()
    assert all(isinstance(r, str) and r for r in replies[:20]) and replies[20:] == [None] * 5


def test_join_onto_a_dataset_folder_writes_arrow(tmp_path: Path, ran: tuple[Path, Path]) -> None:
    datasets = pytest.importorskip("datasets")
    _, out = ran
    folder = tmp_path / "ds"
    datasets.Dataset(rows_table(25)).save_to_disk(str(folder))
    target = tmp_path / "labelled.arrow"
    proc = cli("export", str(out), "-o", str(target), "--join", str(folder), "--failed", "skip")
    assert proc.returncode == 0, proc.stderr
    with pa.ipc.open_file(target) as reader:
        got = reader.read_all()
    assert got.column("doc").to_pylist() == rows_table(25).column("doc").to_pylist()[:20]
    assert got.schema.field("seen").type == pa.timestamp("us")
    assert set(got.column("out_status").to_pylist()) == {"ok"}


def test_join_onto_a_parquet_folder_and_arrow_file_to_csv(
    tmp_path: Path, ran: tuple[Path, Path]
) -> None:
    _, out = ran
    folder = tmp_path / "parts"
    (folder / "lang=en").mkdir(parents=True)
    whole = rows_table(25)
    pq.write_table(whole.slice(0, 12), folder / "lang=en" / "part-0.parquet")
    pq.write_table(whole.slice(12), folder / "lang=en" / "part-1.parquet")
    arrow = tmp_path / "rows.feather"
    with pa.ipc.new_file(arrow, whole.schema) as writer:
        writer.write_table(whole, max_chunksize=5)
    for source in (folder, arrow):
        target = tmp_path / f"{source.name}.csv"
        proc = cli("export", str(out), "-o", str(target), "--join", str(source))
        assert proc.returncode == 0, proc.stderr
        lines = target.read_text().splitlines()
        header = lines[0].split(",")
        assert header[:5] == ["doc", "title", "tags", "seen", "meta"]
        assert ("lang" in header) == (source == folder)
        assert [line.split(",")[0] for line in lines[1:]] == [
            str(i) for i in whole.column("doc").to_pylist()
        ]
        first = next(line for line in lines[1:] if line.startswith("0,"))
        # Lists and structs as JSON, timestamps as ISO 8601.
        assert '"[""a"",""0""]"' in first and "2026-01-02T03:04:05" in first
        assert '"{""lang"":""en"",""pages"":0}"' in first


def test_rows_order_from_parquet_to_jsonl(tmp_path: Path, ran: tuple[Path, Path]) -> None:
    rows, out = ran
    target = tmp_path / "ordered.jsonl"
    proc = cli("export", str(out), "-o", str(target), "--rows", str(rows), "--id-field", "doc")
    assert proc.returncode == 0, proc.stderr
    ids = [line["id"] for line in read_out(target)]
    assert ids == [str(i) for i in rows_table(25).column("doc").to_pylist()]


def test_a_join_column_the_table_lacks_and_a_broken_table_are_clear(
    tmp_path: Path, ran: tuple[Path, Path]
) -> None:
    rows, out = ran
    proc = cli("export", str(out), "-o", str(tmp_path / "x.csv"), "--join", str(rows),
               "--id-field", "nope")  # fmt: skip
    assert proc.returncode == 2 and "has no column 'nope' (--id-field)" in proc.stderr
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 64)
    proc = cli("export", str(out), "-o", str(tmp_path / "x.csv"), "--join", str(broken))
    assert proc.returncode == 2 and "cannot be read as Parquet" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.csv").exists()


def test_python_joins_results_onto_a_dataframe(ran: tuple[Path, Path]) -> None:
    pd = pytest.importorskip("pandas")
    from llmbatch.io.export import OutputIndex, Shape, ids_of_rows, ordered_records

    _, out = ran
    frame = rows_table(25).to_pandas()
    index = OutputIndex.build(out, prefix="out_")
    records = list(
        ordered_records(index, ids_of_rows(frame, "doc"), Shape(join=True, prefix="out_"))
    )
    assert [r["doc"] for r in records] == frame["doc"].tolist()
    assert [r["out_status"] for r in records] == ["ok"] * 20 + ["missing"] * 5
    assert isinstance(pd.DataFrame(records), pd.DataFrame)
