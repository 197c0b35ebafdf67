"""The response cache never turns another file into a database.

`run --cache OUT -o OUT` on a fresh run: the journal had just created OUT (empty), and SQLite
made it a database: the run sent nothing, exited 0, and OUT was no longer a results file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbatch.io.cache import CacheError, SQLiteCache
from llmbatch.types import CompletionRequest

from .helpers import cli, read_out, run_args


def key(request: CompletionRequest) -> str:
    return request.prompt or ""


@pytest.mark.parametrize(
    "content",
    [b"", b'{"custom_id": "r0"}\n', b"SQLite"],
    ids=["empty", "journal", "short"],
)
def test_an_existing_file_that_is_not_sqlite_is_refused_and_left_as_it_was(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(CacheError) as caught:
        SQLiteCache(path, key)
    assert caught.value.path == path and "not a SQLite database" in caught.value.reason
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no -wal, no -shm


def test_a_new_path_and_an_existing_cache_still_open(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db", key)
    cache.close()
    SQLiteCache(tmp_path / "c.db", key).close()


def test_cache_equal_to_output_leaves_the_output_a_results_file(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"p{i}"}) + "\n" for i in range(3)))
    proc = cli(*run_args(sim, inp, out, "--cache", str(out)))
    assert proc.returncode == 2, proc.stderr  # refused by the cache, or earlier by the run
    assert sim.stats()["received"] == 0
    assert not out.exists() or not out.read_bytes().startswith(b"SQLite")
    proc = cli(*run_args(sim, inp, out))  # the same output serves the run afterwards
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == ["r0", "r1", "r2"]


def test_an_empty_file_given_as_the_cache_is_refused_by_the_run(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_sim
) -> None:
    # Someone else's file, created but not written yet: SQLite would have made it a database.
    sim = start_sim()
    inp, out, other = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "notes.txt"
    inp.write_text(json.dumps({"id": "r0", "prompt": "p"}) + "\n")
    other.touch()
    proc = cli(*run_args(sim, inp, out, "--cache", str(other)))
    assert proc.returncode == 2, proc.stderr
    assert f"{other}: an empty file, not a SQLite database" in proc.stderr
    assert other.read_bytes() == b"" and sim.stats()["received"] == 0
