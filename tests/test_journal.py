"""The output journal: torn tails, the lock, compaction, foreign lines and statistics."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from llmbatch.errors import ServerError
from llmbatch.io import journal as journal_module
from llmbatch.io.journal import Journal, JournalLocked, journal_stats, result_line
from llmbatch.types import BatchResult, CompletionResponse, Usage

from .filesystems import fill, tiny_fs


def ok(rid: str, content: str = "fine") -> BatchResult:
    return BatchResult(rid, response=CompletionResponse(content, usage=Usage(3, 4)), attempts=1)


def failed(rid: str) -> BatchResult:
    return BatchResult(rid, error=ServerError("boom", status_code=500), attempts=2)


def lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out) as j:
        for i in range(5):
            j.write(ok(f"r{i}"))
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"id": "batch_req_x", "custom_id": "r5", "resp')
    with Journal(out) as j:
        assert j.scan.repaired_bytes == len(b'{"id": "batch_req_x", "custom_id": "r5", "resp')
        assert j.scan.ok_count == 5 and all(j.scan.is_ok(f"r{i}") for i in range(5))
    assert out.read_bytes() == whole


def test_a_second_journal_on_the_same_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out), pytest.raises(JournalLocked, match="another llmbatch run"):
        Journal(out).open()
    with Journal(out):  # released on close
        pass


def test_the_lock_holds_through_a_symlink_to_the_same_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(out)
    with Journal(out), pytest.raises(JournalLocked):
        Journal(alias).open()
    with Journal(alias), pytest.raises(JournalLocked):
        Journal(out).open()


def test_the_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "out.jsonl.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(JournalLocked):
            Journal(out).open()
    finally:
        holder.kill()
        holder.wait()
    with Journal(out):
        pass


def redo_one_failure(out: Path) -> None:
    """Write a, b (failed), c; then, as --retry-failed does, a fresh line for b."""
    with Journal(out) as j:
        j.write(ok("a"))
        j.write(failed("b"))
        j.write(ok("c"))
    with Journal(out) as j:
        assert j.scan.failed_count == 1 and j.scan.is_failed("b")
        j.write(ok("b", "second try"))


def test_compaction_keeps_the_newest_line_of_each_id(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    redo_one_failure(out)
    records = lines(out)
    assert [r["custom_id"] for r in records] == ["a", "c", "b"]
    assert records[2]["error"] is None
    assert not (tmp_path / "out.jsonl.compact.tmp").exists()


def test_compaction_writes_through_a_symlink_and_keeps_the_mode(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "out.jsonl"
    real.touch(mode=0o600)
    os.chmod(real, 0o600)
    link = tmp_path / "out.jsonl"
    link.symlink_to(real)
    redo_one_failure(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert [r["custom_id"] for r in lines(real)] == ["a", "c", "b"]
    assert os.stat(real).st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp")) and not list(real_dir.glob("*.tmp"))


def test_a_failed_compaction_removes_its_temp_file_and_keeps_the_original(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out) as j:
        j.write(failed("a"))
        j.write(ok("b"))
    syncs: list[int] = []

    def fsync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) > 1:  # the journal's own fsync passes; the temp file's fails
            raise OSError(errno.ENOSPC, "No space left on device")

    journal = Journal(out, fsync=fsync)
    journal.open()
    journal.write(ok("a"))
    before = out.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        journal.close()
    assert out.read_bytes() == before
    assert not (tmp_path / "out.jsonl.compact.tmp").exists()
    with Journal(out) as again:  # the lock was released; the next close compacts
        assert again.scan.ok_count == 2 and again.scan.is_ok("a") and again.scan.is_ok("b")
    assert sorted(r["custom_id"] for r in lines(out)) == ["a", "b"]


def test_compaction_on_a_full_disk_leaves_the_original_intact(tmp_path: Path) -> None:
    with tiny_fs(tmp_path, "128k") as disk:  # room for the output, its index and their copies
        out = disk / "out.jsonl"
        with Journal(out) as j:
            for i in range(100):
                j.write(failed(f"r{i}"))
        with Journal(out) as j:
            j.write(ok("r0"))
        fill(disk / "filler")  # take what is left, so the rewrite cannot fit
        journal = Journal(out)
        journal.open()
        journal.write(ok("r1"))
        before = out.read_bytes()
        with pytest.raises(OSError) as info:
            journal.close()
        assert info.value.errno == errno.ENOSPC
        assert out.read_bytes() == before
        assert not (disk / "out.jsonl.compact.tmp").exists()


def test_foreign_lines_are_ignored_by_resume_and_stats(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out) as j:
        j.write(ok("a"))
    with open(out, "a") as f:
        for foreign in (
            {"custom_id": 5},
            {"custom_id": "b", "error": "x"},
            {"custom_id": "c", "error": None, "llmbatch": "nope"},
            {"custom_id": ["d"]},
            [1, 2],
            "text",
        ):
            f.write(json.dumps(foreign) + "\n")
    with Journal(out) as j:
        assert j.scan.ok_count == 1 and j.scan.is_ok("a") and j.scan.failed_count == 0
        assert j.scan.corrupt_lines == [2, 3, 4, 5, 6, 7]
    stats = journal_stats(out)
    assert stats.total_requests == 1 and stats.success_count == 1


def test_stats_count_the_newest_line_of_each_id_before_compaction(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out) as j:
        j.write(failed("a"))
        j.write(ok("b"))
    with open(out, "ab") as f:  # a run killed after redoing "a", before its close compacted
        f.write(result_line(ok("a")))
    stats = journal_stats(out)
    assert stats.total_requests == 2
    assert stats.failure_count == 0 and stats.success_count == 2


def test_write_errors_reach_the_caller(tmp_path: Path) -> None:
    written: list[int] = []

    def write(fd: int, data: memoryview) -> int:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return os.write(fd, data)

    with Journal(tmp_path / "out.jsonl", write=write) as j:
        j.write(ok("a"))
        j.write(ok("b"))
        with pytest.raises(OSError, match="No space left"):
            j.write(ok("c"))
    assert [r["custom_id"] for r in lines(tmp_path / "out.jsonl")] == ["a", "b"]


def test_a_line_is_read_back_to_confirm_its_exact_id(tmp_path: Path) -> None:
    """`_Lines.holds`, the exact check behind resume's finished ids: lines as the encoder
    writes them are compared as bytes, any other form is decoded; never a near miss."""
    from llmbatch.io.journal import _Lines

    out = tmp_path / "out.jsonl"
    lines = [
        result_line(BatchResult("a", response=CompletionResponse("x"))),
        result_line(BatchResult('q"é\\', response=CompletionResponse("x"))),
        b'{"custom_id": "b", "id": "x", "error": null}\n',  # hand-written: another key order
        b'{"id":"x","custom_id":"\\u0063","error":null}\n',  # "c", escaped
        b'{"id":"x","custom_id":"d","response":{"body":{"custom_id":"e"}},"error":null}\n',
        b'{"id":"x","custom_id":"f","error":null,"custom_id":"g"}\n',  # a key twice: decoded
    ]
    out.write_bytes(b"".join(lines))
    found = _Lines(out)
    start = 0
    for raw in lines:
        found.add(start, len(raw))
        start += len(raw)
    try:
        for n, rid in enumerate(["a", 'q"é\\', "b", "c", "d"], 1):
            assert found.holds(n, rid), rid
            assert not found.holds(n, rid + " ") and not found.holds(n, rid.upper())
        assert not found.holds(5, "e") and not found.holds(6, "f") and found.holds(6, "g")
        assert not found.holds(0, "a") and not found.holds(7, "a")
    finally:
        found.close()


def test_a_discarded_journal_removes_what_it_created_and_a_racing_open_takes_a_fresh_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused run's journal removes the output, index and lock its open created. A second
    run that opened the old lock file just before it went must not hold that dead inode as
    its lock (a third would then lock the new file too): it sees the swap and locks anew."""
    out = tmp_path / "out.jsonl"
    first = Journal(out)
    first.open()
    assert {p.name for p in tmp_path.iterdir()} == {"out.jsonl", "out.jsonl.idx", "out.jsonl.lock"}
    real_flock = fcntl.flock
    raced = []

    def flock(fd: int, op: int) -> None:
        if op & fcntl.LOCK_EX and not raced:  # the second open, between its open and flock
            raced.append(fd)
            first.discard()
        real_flock(fd, op)

    monkeypatch.setattr(journal_module.fcntl, "flock", flock)
    second = Journal(out)
    second.open()
    assert raced
    lock = out.with_name("out.jsonl.lock")
    assert second._lock_fd is not None
    assert os.fstat(second._lock_fd).st_ino == os.stat(lock).st_ino  # the file at the path
    with pytest.raises(JournalLocked):
        Journal(out).open()
    second.discard()
    assert list(tmp_path.iterdir()) == []


def test_discard_keeps_an_output_that_holds_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out) as journal:
        journal.write(BatchResult("a", response=CompletionResponse("x")))
    kept = out.read_bytes()
    journal = Journal(out)
    journal.open()
    journal.discard()
    assert out.read_bytes() == kept
    assert {p.name for p in tmp_path.iterdir()} == {"out.jsonl", "out.jsonl.idx", "out.jsonl.lock"}
