"""`llmbatch export`: results in input order, joined to the input rows, as JSONL, CSV, Parquet."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from llmbatch import BatchResult, CompletionResponse
from llmbatch.errors import InvalidOutputError
from llmbatch.io.export import OutputIndex, Shape, ids_of_rows, ordered_records
from llmbatch.io.journal import result_line
from llmbatch.io.writers import open_writer

from .helpers import cli, read_out, start_cli, wait_for_lines

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["spam", "ham"]},
        "n": {"type": "integer", "minimum": 1, "maximum": 9},
        "score": {"type": "number"},
        "meta": {
            "type": "object",
            "properties": {"lang": {"const": "en"}},
            "required": ["lang"],
        },
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["label", "n", "score", "meta", "tags"],
    "additionalProperties": False,
}


def write_rows(path: Path, n: int) -> list[str]:
    ids = [f"row{i:03d}" for i in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "lang"])
        for i, rid in enumerate(ids):
            w.writerow([rid, f"message, number {i}", "en"])
    return ids


def run_rows(sim: Any, rows: Path, out: Path, schema: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--template",
        "Classify: {text}",
        "--rows",
        str(rows),
        "-o",
        str(out),
        "--base-url",
        sim.url + "/v1",
        "--model",
        "m",
        "--no-progress",
        "--schema",
        str(schema),
        *extra,
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_after_an_interrupted_and_resumed_run_is_in_input_order(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "30", "--latency-jitter-ms", "25")
    rows, out, schema = tmp_path / "rows.csv", tmp_path / "out.jsonl", tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    ids = write_rows(rows, 80)
    proc = start_cli(*run_rows(sim, rows, out, schema, "--concurrency", "8"))
    wait_for_lines(out, 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = [r["custom_id"] for r in read_out(out) if r.get("custom_id")]
    assert 12 <= len(done) < 80

    # Export mid-way: every input row, in order; those without a result are "missing".
    partial = tmp_path / "partial.csv"
    proc2 = cli("export", str(out), "-o", str(partial), "--join", str(rows))
    assert proc2.returncode == 0, proc2.stderr
    table = read_csv(partial)
    assert [r["id"] for r in table] == ids
    assert {r["id"] for r in table if r["out_status"] == "ok"} == set(done)
    assert {r["out_status"] for r in table if r["id"] not in done} == {"missing"}

    resumed = cli(*run_rows(sim, rows, out, schema, "--concurrency", "8"))
    assert resumed.returncode == 0, resumed.stderr
    records = {r["custom_id"]: r for r in read_out(out)}
    order = [r["custom_id"] for r in read_out(out)]
    assert sorted(order) == ids and order != ids  # the output is in completion order

    final = tmp_path / "final.csv"
    proc3 = cli("export", str(out), "-o", str(final), "--join", str(rows))
    assert proc3.returncode == 0, proc3.stderr
    assert "wrote 80 row(s)" in proc3.stderr
    table = read_csv(final)
    assert list(table[0]) == [
        "id",
        "text",
        "lang",
        "out_status",
        "out_error_code",
        "out_error_message",
        "out_label",
        "out_n",
        "out_score",
        "out_meta.lang",
        "out_tags",
    ]
    assert [r["id"] for r in table] == ids
    for i, row in enumerate(table):
        parsed = records[row["id"]]["llmbatch"]["parsed"]
        assert row["text"] == f"message, number {i}" and row["out_status"] == "ok"
        assert row["out_label"] == parsed["label"] and int(row["out_n"]) == parsed["n"]
        assert row["out_meta.lang"] == "en" and json.loads(row["out_tags"]) == parsed["tags"]


def test_failed_lines_exported_with_their_error_and_raw_reply(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--invalid-rate", "0.5")
    rows, out, schema = tmp_path / "rows.csv", tmp_path / "out.jsonl", tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    ids = write_rows(rows, 30)
    proc = cli(*run_rows(sim, rows, out, schema, "--max-invalid-retries", "0"))
    assert proc.returncode == 1
    failed = {r["custom_id"] for r in read_out(out) if r["error"]}
    assert 0 < len(failed) < 30

    only = tmp_path / "failed.jsonl"
    assert (
        cli("export", str(out), "-o", str(only), "--rows", str(rows), "--failed", "only").returncode
        == 0
    )
    got = [json.loads(line) for line in only.read_text().splitlines()]
    assert [g["id"] for g in got] == [i for i in ids if i in failed]
    for g in got:
        assert g["status"] == "failed" and g["error_code"] == "invalid_output"
        assert "does not match the schema" in g["error_message"]
        json.loads(g["reply"])  # the raw reply: JSON that broke the schema
        assert g["label"] is None

    skip = tmp_path / "ok.csv"
    assert (
        cli("export", str(out), "-o", str(skip), "--rows", str(rows), "--failed", "skip").returncode
        == 0
    )
    table = read_csv(skip)
    assert [r["id"] for r in table] == [i for i in ids if i not in failed]
    assert {r["status"] for r in table} == {"ok"} and {r["reply"] for r in table} == {""}


def test_parquet_export_reads_back_typed_and_in_order(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    pq = pytest.importorskip("pyarrow.parquet")
    sim = start_sim("--latency-jitter-ms", "5")
    rows, out, schema = tmp_path / "rows.csv", tmp_path / "out.jsonl", tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    ids = write_rows(rows, 25)
    assert cli(*run_rows(sim, rows, out, schema)).returncode == 0
    target = tmp_path / "out.parquet"
    proc = cli("export", str(out), "-o", str(target), "--join", str(rows))
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(target)
    types = {f.name: str(f.type) for f in table.schema}
    assert types["out_n"] == "int64" and types["out_score"] == "double"
    assert types["text"] == types["out_label"] == types["out_tags"] == "string"
    data = table.to_pylist()
    assert [d["id"] for d in data] == ids
    parsed = {r["custom_id"]: r["llmbatch"]["parsed"] for r in read_out(out)}
    assert all(d["out_n"] == parsed[d["id"]]["n"] for d in data)


def _line(rid: str, parsed: Any = None, error: BaseException | None = None) -> bytes:
    response = CompletionResponse(json.dumps(parsed), raw={"content": json.dumps(parsed)})
    if error is not None:
        return result_line(BatchResult(rid, error=error, attempts=1))
    return result_line(BatchResult(rid, response=response, attempts=1, parsed=parsed))


def test_newest_line_of_an_id_wins_and_unknown_ids_come_last(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    bad = InvalidOutputError("broken", response=CompletionResponse('{"x": 1}'))
    out.write_bytes(
        _line("c", {"v": 3})
        + _line("a", error=bad)
        + b'{"not": "a result"}\n'
        + _line("zz", {"v": 99})
        + _line("a", {"v": 1})  # redone with --retry-failed, not compacted yet
        + _line("b", {"v": 2})
        + b'{"custom_id": "torn'
    )
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "n": n}) + "\n" for n, i in enumerate("abcd")))
    index = OutputIndex.build(out, prefix="out_")
    assert index.lines == 5 and index.foreign_lines == 1
    got = list(ordered_records(index, ids_of_rows(rows, "id"), Shape(join=True, prefix="out_")))
    assert [(g.get("id"), g["out_status"], g.get("out_v")) for g in got] == [
        ("a", "ok", 1),
        ("b", "ok", 2),
        ("c", "ok", 3),
        ("d", "missing", None),
        # "zz": not in the input, so no input columns, but its id (a row that does not say
        # whose result it is was useless; it came out with an empty id).
        ("zz", "ok", 99),
    ]
    assert "n" not in got[-1]


def test_join_keeps_the_id_of_results_not_in_the_join_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line("k1", {"v": 1}) + _line("k2", {"v": 2}))
    rows = tmp_path / "rows.csv"
    rows.write_text("key,text\nk1,first\n")
    table = tmp_path / "t.csv"
    proc = cli("export", str(out), "-o", str(table), "--join", str(rows), "--id-field", "key")
    assert proc.returncode == 0, proc.stderr
    got = [(r["key"], r["text"], r["out_v"]) for r in read_csv(table)]
    assert got == [("k1", "first", "1"), ("k2", "", "2")]


def test_parquet_is_written_in_row_groups(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "t.parquet"
    with open_writer(target, ["id", "v"], {"v": {"int"}}, row_group_size=7) as writer:
        for i in range(30):
            writer.write({"id": f"r{i}", "v": i})
    meta = pq.ParquetFile(target).metadata
    assert meta.num_rows == 30 and meta.num_row_groups == 5
    assert not (tmp_path / "t.parquet.tmp").exists()


def test_export_usage_errors(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line("a", {"id": 1}))
    proc = cli("export", str(out), "-o", str(tmp_path / "x.txt"))
    assert proc.returncode == 2 and "name it .jsonl, .csv, .parquet or .arrow" in proc.stderr
    proc = cli("export", str(out), "-o", str(tmp_path / "x.csv"))
    assert proc.returncode == 2 and "column 'id'" in proc.stderr and "--prefix" in proc.stderr
    ok = cli("export", str(out), "-o", str(tmp_path / "x.csv"), "--prefix", "out_")
    assert ok.returncode == 0 and read_csv(tmp_path / "x.csv")[0]["out_id"] == "1"
    rows = tmp_path / "rows.csv"
    # No column holds the output's ids (so none is taken for the run's id field), and no "id".
    rows.write_text("key,text\n1,b\n")
    proc = cli("export", str(out), "-o", str(tmp_path / "y.csv"), "--join", str(rows))
    assert proc.returncode == 2 and "has no column 'id'" in proc.stderr
    proc = cli("export", str(out), "-o", str(out))
    assert proc.returncode == 2 and "would overwrite the results" in proc.stderr


def test_join_rows_that_are_not_utf8_or_not_json_are_named(tmp_path: Path) -> None:
    # Bytes that are not UTF-8 were silently replaced, lines that are not JSON silently
    # dropped: the table differed from the file without a word. A CSV that is not UTF-8 is
    # now refused, naming the byte (tests/test_attack_export_encoding.py).
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line("r1", {"v": 1}) + _line("r2", {"v": 2}))
    rows = tmp_path / "rows.csv"
    rows.write_bytes(b"id,text\nr1,ok\nr2,caf\xe9\n")
    table = tmp_path / "t.csv"
    proc = cli("export", str(out), "-o", str(table), "--join", str(rows))
    assert proc.returncode == 2, proc.stderr
    assert f"{rows} is not valid UTF-8 (line 3, byte offset 20: byte 0xe9" in proc.stderr
    jrows = tmp_path / "rows.jsonl"
    jrows.write_text('{"id": "r1"}\n{broken\n[1]\n{"id": "r2"}\n')
    proc = cli("export", str(out), "-o", str(table), "--join", str(jrows))
    assert proc.returncode == 0, proc.stderr
    assert f"{jrows}: line 2: skipped, malformed JSON" in proc.stderr
    assert "(and 1 more)" in proc.stderr
    assert [r["id"] for r in read_csv(table)] == ["r1", "r2"]


def test_export_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    # The run's input (the user's own data) was replaced by the export without a word.
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line("r1", {"v": 1}))
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text\nr1,a\n")
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"id": "r1", "prompt": "hello"}\n')
    for flag, source in (("--join", rows), ("--rows", rows), ("--input", requests)):
        before = source.read_bytes()
        proc = cli("export", str(out), "-o", str(source), flag, str(source))
        assert proc.returncode == 2, proc.stderr
        assert f"is {flag}: the export would overwrite the input" in proc.stderr
        assert source.read_bytes() == before


def test_the_offset_index_is_sorted_across_runs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Words are sorted in runs and merged (bounded memory): the result is one sorted array."""
    import random

    from llmbatch.io import export

    monkeypatch.setattr(export._SortedWords, "RUN", 7)
    words = export._SortedWords()
    values = [random.Random(i).getrandbits(64) for i in range(100)]
    for value in values:
        words.add(value)
    assert list(words.result()) == sorted(values)
