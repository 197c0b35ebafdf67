"""`--rows` / `RunConfig(rows=...)` over columnar tables: Parquet (file and folder), Arrow IPC
(file and stream), a Hugging Face dataset folder, and pyarrow / datasets / pandas objects.

End to end against the simulator: the reply the simulator derives from the prompt it received
proves which prompt was sent for which id.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch import ConfigError, RunConfig
from llmbatch.io.tables import open_table
from llmbatch.pipeline.source import source_of
from llmbatch.simulate.dialects import reply_text

from .conftest import SimProcess
from .helpers import cli, read_out, start_cli, wait_for

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEMPLATE = "Title: {title} / tags: {tags}"


def table(n: int, *, start: int = 0) -> Any:
    """n rows: an integer id, a title, a list column, an unused wide column."""
    ids = list(range(start, start + n))
    return pa.table(
        {
            "doc": ids,
            "title": [f"paper {i}" for i in ids],
            "tags": [["a", str(i % 3)] for i in ids],
            "body": ["x" * 50 for _ in ids],
        }
    )


def prompt_of(i: int) -> str:
    return f'Title: paper {i} / tags: ["a","{i % 3}"]'


def run_args(sim: SimProcess, rows: Path | str, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--template",
        TEMPLATE,
        "--rows",
        str(rows),
        "--id-field",
        "doc",
        "-o",
        str(out),
        "--base-url",
        sim.url + "/v1",
        "--model",
        "sim",
        "--max-tokens",
        "16",
        "--no-progress",
        *extra,
    ]


def assert_answered(out: Path, ids: range) -> None:
    """Every id once, each answered for its own row's prompt."""
    lines = read_out(out)
    counts = Counter(line["custom_id"] for line in lines)
    assert counts == Counter(str(i) for i in ids)
    for line in lines:
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == reply_text(prompt_of(int(line["custom_id"])), 16, False)


def save_parquet_dir(root: Path) -> None:
    """A Hive-partitioned folder with Spark's marker files, out of name order on disk."""
    (root / "split=b").mkdir(parents=True)
    (root / "split=a").mkdir()
    pq.write_table(table(5, start=10), root / "split=b" / "part-0.parquet")
    pq.write_table(table(5, start=0), root / "split=a" / "part-1.parquet")
    pq.write_table(table(5, start=5), root / "split=a" / "part-2.parquet")
    (root / "_SUCCESS").write_text("")
    (root / "split=a" / ".part-1.parquet.crc").write_text("junk")


def save_ipc_file(path: Path, n: int) -> None:
    with pa.ipc.new_file(path, table(n).schema) as writer:
        for batch in table(n).to_batches(max_chunksize=7):
            writer.write_batch(batch)


def save_ipc_stream(path: Path, n: int) -> None:
    with pa.ipc.new_stream(path, table(n).schema) as writer:
        writer.write_table(table(n), max_chunksize=7)


def save_dataset(path: Path, n: int) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset(table(n)).save_to_disk(str(path))


SAVERS: dict[str, Callable[[Path, int], None]] = {
    "data.parquet": lambda p, n: pq.write_table(table(n), p, row_group_size=7),
    "data.arrow": save_ipc_file,
    "data.arrows": save_ipc_stream,
    "dataset": save_dataset,
    # The bytes decide, not the name: Parquet and Arrow files under any name.
    "data.bin": lambda p, n: pq.write_table(table(n), p),
}


@pytest.mark.parametrize("name", list(SAVERS))
def test_each_format_runs_end_to_end(tmp_path: Path, start_sim, name: str) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    rows, out = tmp_path / name, tmp_path / "out.jsonl"
    SAVERS[name](rows, 23)
    proc = cli(*run_args(sim, rows, out))
    assert proc.returncode == 0, proc.stderr
    assert_answered(out, range(23))


def test_a_parquet_folder_is_read_in_path_order_with_its_partition_keys(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    save_parquet_dir(root)
    rows = list(open_table(root).rows())
    assert [n for n, _ in rows] == list(range(1, 16))
    # split=a/part-1, split=a/part-2, split=b/part-0: ids 0..14 in order.
    assert [row["doc"] for _, row in rows] == list(range(15))  # type: ignore[index]
    assert [row["split"] for _, row in rows] == ["a"] * 10 + ["b"] * 5  # type: ignore[index]
    assert open_table(root).columns() == ["doc", "title", "tags", "body", "split"]


def test_a_parquet_folder_runs_from_the_cli(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    root, out = tmp_path / "docs", tmp_path / "out.jsonl"
    save_parquet_dir(root)
    proc = cli(*run_args(sim, root, out, "--template", "{title} in {split}"))
    assert proc.returncode == 0, proc.stderr
    lines = read_out(out)
    assert len(lines) == 15
    for line in lines:
        i = int(line["custom_id"])
        expected = f"paper {i} in {'a' if i < 10 else 'b'}"
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == reply_text(expected, 16, False)


def python_tables() -> dict[str, Callable[[int], Any]]:
    def dataset(n: int) -> Any:
        datasets = pytest.importorskip("datasets")
        return datasets.Dataset(table(n))

    def frame(n: int) -> Any:
        pytest.importorskip("pandas")
        return table(n).to_pandas()

    return {"pyarrow": table, "datasets": dataset, "pandas": frame}


@pytest.mark.parametrize("kind", list(python_tables()))
def test_runconfig_takes_a_table_object(tmp_path: Path, start_sim, kind: str) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    out = tmp_path / "out.jsonl"
    rows = python_tables()[kind](30)
    config = RunConfig(
        template=TEMPLATE,
        rows=rows,
        id_field="doc",
        output=str(out),
        base_url=sim.url + "/v1",
        model="sim",
        max_tokens=16,
    )
    summary = llmbatch.run(config)
    assert summary.exit_code == 0
    assert summary.stats.success_count == 30
    assert_answered(out, range(30))
    # Run again: everything is in the output, nothing is sent.
    sim.reset()
    again = llmbatch.run(config)
    assert again.exit_code == 0 and again.skipped_done == 30
    assert sim.stats()["received"] == 0


def test_pandas_missing_values_are_missing_fields() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "doc": [1, 2, 3, 4],
            "title": ["a", None, "c", "d"],
            "score": [1.5, 2.0, float("nan"), 4.0],
            "when": pd.to_datetime(["2024-01-01", None, "2024-01-03", "2024-01-04"]),
            "n": pd.array([1, 2, 3, None], dtype="Int64"),
        }
    )
    config = RunConfig(
        template="{title} {score} {when} {n}", rows=frame, id_field="doc", output="o.jsonl"
    )
    items = list(source_of(config)())
    assert [str(i) for i in items[1:]] == [
        "row 2: template field {title} is missing",
        "row 3: template field {score} is missing",
        "row 4: template field {n} is missing",
    ]
    assert items[0].request.prompt == "a 1.5 2024-01-01 00:00:00 1"  # type: ignore[union-attr]


def test_bad_rows_are_named_by_row_and_field_and_nothing_is_sent(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    rows, out = tmp_path / "rows.parquet", tmp_path / "out.jsonl"
    data = table(6).to_pylist()
    data[2]["title"] = None
    data[4]["doc"] = None
    pq.write_table(pa.Table.from_pylist(data, schema=table(6).schema), rows)
    proc = cli(*run_args(sim, rows, out))
    assert proc.returncode == 2
    assert f"{rows} row 3: template field {{title}} is missing" in proc.stderr, proc.stderr
    assert "row 5: no value for the id field 'doc'" in proc.stderr
    assert sim.stats()["received"] == 0
    # --on-bad-line skip runs the rest and says which were left out.
    proc = cli(*run_args(sim, rows, out, "--on-bad-line", "skip"))
    assert proc.returncode == 1, proc.stderr  # as for any input with bad lines
    assert sorted(int(line["custom_id"]) for line in read_out(out)) == [0, 1, 3, 5]


def test_binary_text_is_read_and_bad_bytes_spoil_only_their_row(tmp_path: Path) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "text": [b"caf\xc3\xa9", b"\xff\xfe", None]}), rows
    )
    config = RunConfig(template="{text}", rows=str(rows), output="o.jsonl")
    items = list(source_of(config)())
    assert items[0].request.prompt == "café"  # type: ignore[union-attr]
    assert str(items[1]) == "row 2: field 'text' holds bytes that are not UTF-8 (byte 0)"
    assert str(items[2]) == "row 3: template field {text} is missing"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"id_field": "nope"}, "id_field", "has no such column"),
        ({"template": "{title} {abstract}"}, "template", "has no column 'abstract'"),
        ({"template": "{title"}, "template", "not a valid format string"),
    ],
)
def test_a_column_the_table_lacks_is_refused_before_reading(
    tmp_path: Path, changes: dict[str, Any], field: str, words: str
) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(table(3), rows)
    base: dict[str, Any] = {"template": TEMPLATE, "id_field": "doc"}
    config = RunConfig(rows=str(rows), output=str(tmp_path / "o.jsonl"), **(base | changes))
    with pytest.raises(ConfigError) as caught:
        source_of(config)
    assert caught.value.field == field
    assert words in str(caught.value)
    if field == "id_field":
        assert "'doc', 'title', 'tags', 'body'" in str(caught.value)  # the columns there are


def test_an_absent_column_is_empty_text_with_missing_field_empty(tmp_path: Path) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(table(2), rows)
    config = RunConfig(
        template="{title}|{abstract}",
        rows=str(rows),
        id_field="doc",
        missing_field="empty",
        output="o.jsonl",
    )
    assert [i.request.prompt for i in source_of(config)()] == ["paper 0|", "paper 1|"]  # type: ignore[union-attr]


def test_unreadable_tables_are_clear_errors(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not really parquet")
    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {"train": datasets.Dataset(table(2)), "test": datasets.Dataset(table(2))}
    ).save_to_disk(str(splits))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (str(broken), "cannot be read as Parquet"),
        (
            str(splits),
            f"is a DatasetDict (splits: train, test); give one split's folder: {splits / 'train'}",
        ),
        (str(empty), "is a folder with no Parquet files"),
        (str(tmp_path / "nope.parquet"), "no such file or folder"),
    ]
    for rows, words in cases:
        config = RunConfig(template="{title}", rows=rows, output="o.jsonl")
        with pytest.raises(ConfigError) as caught:
            source_of(config)
        assert caught.value.field == "rows" and words in str(caught.value), caught.value


def test_a_one_shot_reader_is_refused_when_the_config_is_made() -> None:
    reader = pa.RecordBatchReader.from_batches(table(2).schema, table(2).to_batches())
    with pytest.raises(ConfigError) as caught:
        RunConfig(template="{title}", rows=reader, output="o.jsonl")
    assert caught.value.field == "rows"
    assert "reads its rows twice" in str(caught.value)
    with pytest.raises(ConfigError, match="got a list"):
        RunConfig(template="{title}", rows=[{"title": "x"}], output="o.jsonl")


def test_the_cli_names_the_flags_of_a_bad_table_setting(tmp_path: Path) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(table(3), rows)
    proc = cli(
        "run", "--template", "{title}", "--rows", str(rows), "-o", str(tmp_path / "o.jsonl"),
        "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--id-field 'id'" in proc.stderr and "has no such column" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_after_kill_9_with_a_parquet_source(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "40")
    rows, out = tmp_path / "rows.parquet", tmp_path / "out.jsonl"
    pq.write_table(table(300), rows, row_group_size=50)
    proc = start_cli(*run_args(sim, rows, out, "--concurrency", "8"))

    def written() -> int:
        return out.read_bytes().count(b"\n") if out.exists() else 0

    try:
        wait_for(lambda: written() >= 100, "100 results written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    done = {json.loads(x)["custom_id"] for x in out.read_bytes().split(b"\n") if x.endswith(b"}")}
    assert 100 <= len(done) < 300
    sim.reset()
    again = cli(*run_args(sim, rows, out, "--concurrency", "8"))
    assert again.returncode == 0, again.stderr
    assert_answered(out, range(300))
    assert sim.stats()["received"] == 300 - len(done)  # finished rows were not sent again


def test_a_saved_dataset_keeps_the_order_it_was_saved_in(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    shuffled = datasets.Dataset(table(20)).shuffle(seed=3).select(range(12))
    shuffled.save_to_disk(str(tmp_path / "ds"))
    read = [row["doc"] for _, row in open_table(tmp_path / "ds").rows(["doc"])]  # type: ignore[index]
    assert read == shuffled["doc"][:] and read != sorted(read)


def test_a_dataset_folder_it_cannot_stream_goes_to_the_library(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "state.json").write_text('{"_data_files": []}')  # no files: not streamable
    config = RunConfig(template="{title}", rows=str(folder), output="o.jsonl")
    with pytest.raises(ConfigError) as caught:
        source_of(config)
    assert "cannot be read as a Hugging Face dataset" in str(caught.value)


def test_a_parquet_source_runs_on_ray(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("ray")
    sim = start_sim("--latency-ms", "5")
    rows, out = tmp_path / "rows.parquet", tmp_path / "out.jsonl"
    pq.write_table(table(40), rows, row_group_size=16)
    proc = cli(*run_args(sim, rows, out, "--ray", "--workers", "2"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_answered(out, range(40))


def test_a_duckdb_query_over_local_files_is_a_source(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("duckdb")
    sim = start_sim("--latency-ms", "5")
    (tmp_path / "parts").mkdir()
    pq.write_table(table(10), tmp_path / "parts" / "a.parquet")
    pq.write_table(table(10, start=10), tmp_path / "parts" / "b.parquet")
    out = tmp_path / "out.jsonl"
    glob = tmp_path / "parts" / "*.parquet"
    query = f"duckdb:SELECT * FROM '{glob}' WHERE doc % 2 = 0 ORDER BY doc DESC"
    proc = cli(*run_args(sim, query, out))
    assert proc.returncode == 0, proc.stderr
    assert_answered(out, range(0, 20, 2))
    # export follows the query's order
    target = tmp_path / "x.jsonl"
    proc = cli("export", str(out), "-o", str(target), "--join", query, "--id-field", "doc")
    assert proc.returncode == 0, proc.stderr
    assert [row["doc"] for row in read_out(target)] == list(range(18, -1, -2))
    # A query DuckDB refuses is named, with DuckDB's reason; nothing is sent.
    sim.reset()
    proc = cli(*run_args(sim, "duckdb:SELECT nope FROM 'missing.parquet'", tmp_path / "o2.jsonl"))
    assert proc.returncode == 2 and "--rows the DuckDB query cannot be run" in proc.stderr
    assert "Traceback" not in proc.stderr and sim.stats()["received"] == 0


def test_a_path_object_and_the_plan_read_a_table(tmp_path: Path) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(table(12), rows)
    config = RunConfig(template=TEMPLATE, rows=rows, id_field="doc", output=str(tmp_path / "o"))
    plan = llmbatch.plan(config.replace(model="gpt-4o-mini"))
    assert plan.requests == 12 and plan.where == str(rows)
    frame_plan = llmbatch.plan(config.replace(rows=table(5), model="gpt-4o-mini"))
    assert frame_plan.requests == 5 and frame_plan.where == "the pyarrow Table"
