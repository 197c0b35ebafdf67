"""The sidecar index of an output (`llmbatch.io.index`): never trusted over the journal.

Each test damages the index or the journal the way real life does (deleted, cut, left behind
by a crash, copied) and checks that what a resume reads is exactly what the journal holds.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from llmbatch import BatchResult, CompletionResponse, Usage
from llmbatch.errors import RateLimitError
from llmbatch.io.index import entries, index_path, summary
from llmbatch.io.journal import Journal, journal_stats, read_output

from .helpers import cli, ids_once, read_out, run_args, start_cli, wait_for, write_simple


def ok(rid: str, cost: float = 0.001) -> BatchResult:
    return BatchResult(
        rid, response=CompletionResponse("x", usage=Usage(10, 3)), attempts=1, cost=cost
    )


def failed(rid: str) -> BatchResult:
    return BatchResult(rid, error=RateLimitError(), attempts=2)


def write(out: Path, results: list[BatchResult]) -> None:
    with Journal(out) as journal:
        for result in results:
            journal.write(result)


def from_journal(out: Path) -> list[tuple[int, str, bool, float | None]]:
    """What the journal alone says, line by line (the index ignored)."""
    return [(e.line, e.custom_id, e.ok, e.money) for e in entries(out, trust_index=False)]


def from_index(out: Path) -> list[tuple[int, str, bool, float | None]]:
    return [(e.line, e.custom_id, e.ok, e.money) for e in entries(out)]


def finished(out: Path, ids: list[str]) -> dict[str, bool | None]:
    scan = read_output(out)
    return {rid: scan.finished.status(rid) for rid in ids}


def test_the_index_is_written_beside_the_output_and_matches_it(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}") if i % 3 else failed(f"r{i}") for i in range(50)])
    assert index_path(out).exists()
    assert from_index(out) == from_journal(out)
    found = summary(out)
    assert found is not None and (found.lines, found.repeats) == (50, 0)
    assert found.covered == out.stat().st_size


def test_a_deleted_index_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}") for i in range(40)])
    index_path(out).unlink()
    with Journal(out) as journal:
        assert journal.scan.ok_count == 40
        journal.write(ok("r40"))
    assert index_path(out).exists()
    assert from_index(out) == from_journal(out)
    assert len(from_index(out)) == 41


def test_a_truncated_index_is_cut_to_its_good_records_and_caught_up(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}") if i % 4 else failed(f"r{i}") for i in range(30)])
    whole = index_path(out).read_bytes()
    expected = from_journal(out)
    # Every cut: in the header, inside a record, on a record's boundary.
    for cut in range(0, len(whole), 7):
        index_path(out).write_bytes(whole[:cut])
        assert from_index(out) == expected, cut
        with Journal(out):
            pass  # a run's open repairs it
        assert index_path(out).read_bytes() == whole, cut


def test_an_index_older_than_the_journal_is_caught_up(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"a{i}") for i in range(20)])
    old = index_path(out).read_bytes()
    write(out, [failed(f"b{i}") for i in range(15)])
    index_path(out).write_bytes(old)  # as a run killed before its index caught up leaves it
    assert finished(out, ["a0", "a19", "b0", "b14", "c0"]) == {
        "a0": True,
        "a19": True,
        "b0": False,
        "b14": False,
        "c0": None,
    }
    with Journal(out) as journal:
        assert (journal.scan.ok_count, journal.scan.failed_count) == (20, 15)
    assert from_index(out) == from_journal(out)


def test_a_garbled_index_is_never_believed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}") for i in range(25)])
    data = bytearray(index_path(out).read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in a record: its CRC fails
    index_path(out).write_bytes(bytes(data))
    assert from_index(out) == from_journal(out)
    stats = journal_stats(out)
    assert stats.total_requests == 25 and stats.success_count == 25


def test_an_index_of_another_file_is_rebuilt(tmp_path: Path) -> None:
    """A copied output (its old index beside it, or another output's) names another inode."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(a, [ok(f"a{i}") for i in range(10)])
    write(b, [failed(f"b{i}") for i in range(12)])
    shutil.copyfile(index_path(a), index_path(b))
    assert finished(b, ["a0", "b0"]) == {"a0": None, "b0": False}
    assert from_index(b) == from_journal(b)


def test_a_journal_rewritten_under_its_index_wins(tmp_path: Path) -> None:
    """A hand edit that keeps the file (inode) and its size: the sampled lines (the first,
    second, fourth ... and the last) are checked against the journal's bytes."""
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}") for i in range(9)])
    lines = out.read_bytes().splitlines(keepends=True)
    edited = lines[-1].replace(b'"custom_id":"r8"', b'"custom_id":"z8"')
    with open(out, "r+b") as f:  # in place: same inode, same size
        f.seek(sum(len(x) for x in lines[:-1]))
        f.write(edited)
    assert finished(out, ["r8", "z8"]) == {"r8": None, "z8": True}
    with Journal(out) as journal:
        assert journal.scan.is_ok("z8") and not journal.scan.is_ok("r8")
    assert from_index(out) == from_journal(out)


def test_a_torn_journal_tail_under_an_index_that_claims_more_the_journal_wins(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}") for i in range(20)])
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    keep = sum(len(x) for x in lines[:12])
    out.write_bytes(data[: keep + len(lines[12]) // 2])  # line 13 torn, 14-20 gone
    with Journal(out) as journal:
        assert journal.scan.repaired_bytes == len(lines[12]) // 2
        assert journal.scan.ok_count == 12
        assert not journal.scan.is_ok("r12") and not journal.scan.is_ok("r19")
        journal.write(ok("r12"))
    assert [e[1] for e in from_index(out)] == [f"r{i}" for i in range(13)]
    assert from_index(out) == from_journal(out)


def test_a_forced_hash_collision_still_resumes_exactly(tmp_path: Path) -> None:
    """Every id hashes alike (an injected hash): the table tells them apart by their second,
    independent check, so no id counts as finished that is not, and none is lost."""
    out = tmp_path / "out.jsonl"

    def collide(rid: str) -> int:
        return 42

    with Journal(out, id_hash=collide) as journal:
        for i in range(200):
            journal.write(ok(f"r{i}") if i % 2 else failed(f"r{i}"))
    with Journal(out, id_hash=collide) as journal:
        scan = journal.scan
        assert (scan.ok_count, scan.failed_count) == (100, 100)
        for i in range(200):
            assert scan.finished.status(f"r{i}") is bool(i % 2), i
        for other in ("r200", "r-1", "x", "r1 ", "R1"):
            assert scan.finished.status(other) is None, other
        journal.write(ok("r0"))  # a failed one redone: its old line is superseded
        assert scan.superseded == {1}
    with Journal(out, id_hash=collide) as journal:
        assert journal.scan.ok_count == 101 and journal.scan.is_ok("r0")
        assert journal.scan.lines == 200  # compacted: r0 once


def test_an_unfinished_id_that_collides_on_both_hashes_is_not_taken_for_finished(
    tmp_path: Path,
) -> None:
    """Both of the table's hashes injected to collide for every id (the 95-bit match that
    used to decide): an unfinished id still reads as unfinished (the match is checked against
    the id of the line it names), is written, and supersedes nobody's line: every id ends
    exactly once, the finished ones with their own result."""
    out = tmp_path / "out.jsonl"

    def collide(rid: str) -> int:
        return 42

    with Journal(out, id_hash=collide, id_check=collide) as journal:
        for i in range(50):
            journal.write(ok(f"r{i}") if i % 2 else failed(f"r{i}"))
        journal.write(ok("r0"))  # a failed one redone: the same id, so its old line goes
        assert journal.scan.superseded == {1}
    with Journal(out, id_hash=collide, id_check=collide) as journal:
        scan = journal.scan
        assert (scan.lines, scan.ok_count, scan.failed_count) == (50, 26, 24)
        for i in range(50):
            assert scan.finished.status(f"r{i}") is (i == 0 or i % 2 == 1), i
        for other in ("x", "r50", "r1 ", "R1"):
            assert scan.finished.status(other) is None, other
            assert not scan.is_ok(other) and not scan.is_failed(other)
        journal.write(ok("x"))
        assert scan.superseded == set() and scan.is_ok("x") and scan.is_ok("r1")
    assert set(ids_once(out)) == {f"r{i}" for i in range(50)} | {"x"}
    assert from_index(out) == from_journal(out)


def test_stats_from_the_index_match_stats_from_the_journal(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}", cost=0.01 * i) if i % 5 else failed(f"r{i}") for i in range(60)])
    with_index = journal_stats(out)
    index_path(out).unlink()
    without = journal_stats(out)
    assert with_index == without
    assert with_index.failure_count == 12 and with_index.success_count == 48


def test_kill_9_while_the_index_is_written_then_rerun_gives_every_id_once(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    """A real run killed with SIGKILL mid-run; its index is then also cut inside a record,
    as a kill during the index's write leaves it. The rerun sends only what is missing,
    writes every id exactly once, and leaves an index that matches the journal."""
    sim = start_sim("--latency-ms", "30")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 400)
    args = run_args(sim, inp, out, "--concurrency", "8")
    proc = start_cli(*args)
    wait_for(
        lambda: index_path(out).exists() and index_path(out).stat().st_size > 4000,
        "the index to hold records",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    size = index_path(out).stat().st_size
    with open(index_path(out), "r+b") as f:
        f.truncate(size - 37)  # a record cut part-way
    written = {e.custom_id for e in entries(out, trust_index=False)}
    assert 0 < len(written) < 400
    sim.reset()
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert set(ids_once(out)) == set(ids)
    assert sim.stats()["received"] == 400 - len(written)
    assert from_index(out) == from_journal(out)
    assert len(read_out(out)) == 400


def test_on_a_full_disk_the_index_gives_way_to_the_results(tmp_path: Path) -> None:
    """The first write that finds the disk full drops the index (its space freed) and the
    line is written again; the next open rebuilds the index."""
    import errno

    out = tmp_path / "out.jsonl"
    full = [True]

    def write_once_full(fd: int, data: memoryview) -> int:
        if full[0]:
            full[0] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    write(out, [ok("a")])
    with Journal(out, write=write_once_full) as journal:
        journal.write(ok("b"))
    assert not index_path(out).exists()
    assert [e[1] for e in from_journal(out)] == ["a", "b"]
    assert finished(out, ["a", "b"]) == {"a": True, "b": True}
    with Journal(out):
        pass
    assert from_index(out) == from_journal(out)


def test_a_hand_edited_line_with_absurd_numbers_is_indexed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok("a")])
    with open(out, "ab") as f:
        f.write(
            b'{"custom_id":"h","error":null,"llmbatch":{"attempts":1e30,"duration":1e308,'
            b'"usage":{"prompt_tokens":1e40,"completion_tokens":-5},"cost":"free"}}\n'
        )
    with Journal(out) as journal:
        assert journal.scan.ok_count == 2 and journal.scan.is_ok("h")
    assert from_index(out) == from_journal(out)
    assert journal_stats(out).total_requests == 2
