"""`llmbatch run --finish-by`: the batch API and realtime in one run, against the simulator.

The CLI runs as a real subprocess against the simulator's batch API on a scaled clock
(`--batch-seconds`); what was bought is read from the simulator's /stats: realtime calls
(`received`), batch lines answered, batches created and cancelled. Nothing here asserts how
long anything took: the deadlines are set so that the decisions (stay, switch) do not depend
on the machine's speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    clean_env,
    cli,
    deadline_args,
    ledger_chunks,
    read_out,
    wait_for,
    write_requests,
)

N = 60


def paths(tmp_path: Path) -> tuple[Path, Path]:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(N)])
    return inp, out


def routes(out: Path) -> Counter[bool]:
    """Lines answered through the batch API (True) and realtime (False); every id once."""
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines).most_common(1)[0][1] == 1
    assert all(rec["error"] is None for rec in lines)
    return Counter(bool(rec["llmbatch"].get("batch_api")) for rec in lines)


def duplicates(stderr: str) -> int:
    found = re.search(r"([\d,]+) request\(s\) were answered by both paths", stderr)
    return int(found.group(1).replace(",", "")) if found else 0


def test_a_batch_that_comes_back_in_time_is_all_batch_priced(start_sim, tmp_path) -> None:
    sim = start_sim("--latency-ms", "20", "--batch-seconds", "1")
    inp, out = paths(tmp_path)
    done = cli(*deadline_args(sim, inp, out, "10m"))
    assert done.returncode == 0, done.stderr
    assert routes(out) == Counter({True: N})
    stats = sim.stats()
    assert stats["received"] == 0 and stats["batches_created"] == 1
    assert stats["batches_cancelled"] == 0
    # Priced at the batch price: half of gpt-4o-mini's realtime rates.
    for rec in read_out(out):
        usage = rec["llmbatch"]["usage"]
        realtime = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.6) / 1e6
        assert abs(rec["llmbatch"]["cost"] - realtime / 2) < 1e-12


def test_a_stalled_batch_is_cancelled_and_the_work_finished_realtime(start_sim, tmp_path) -> None:
    # The batch never progresses; its window is far away. The switch comes when the time
    # left reaches what realtime needs for all 60 (conservatively estimated) plus a margin.
    sim = start_sim(
        "--latency-ms", "20", "--batch-seconds", "1", "--batch-stall-rate", "1",
        "--batch-expire-seconds", "600",
    )  # fmt: skip
    inp, out = paths(tmp_path)
    done = cli(*deadline_args(sim, inp, out, "12s"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"moving \d+ request\(s\) to realtime", done.stderr)
    assert routes(out) == Counter({False: N})
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batches_cancelled"] == 1
    assert stats["received"] == N  # each request bought once, realtime
    assert stats["batch_lines_answered"] == 0


def test_a_switch_keeps_what_the_cancelled_batch_finished(start_sim, tmp_path) -> None:
    # A slow batch (its lines finish one by one over about 21 s; a cancel takes 0.2 s) is
    # partly done when the switch comes: its finished lines are kept (batch priced), the rest
    # goes realtime, and whatever both paths answered is reported.
    sim = start_sim(
        "--latency-ms", "20", "--batch-seconds", "2", "--batch-expire-seconds", "600",
        "--batch-delay-median", "20", "--batch-delay-sigma", "0.01",
    )  # fmt: skip
    inp, out = paths(tmp_path)
    done = cli(*deadline_args(sim, inp, out, "20s"))
    assert done.returncode == 0, done.stderr
    by_route = routes(out)
    stats = sim.stats()
    assert stats["batches_cancelled"] == 1
    assert by_route[True] > 0 and by_route[False] > 0
    # Bought = realtime calls + batch lines answered; beyond one per id only what was
    # reported as answered by both paths.
    assert stats["received"] + stats["batch_lines_answered"] == N + duplicates(done.stderr)
    assert by_route[True] <= stats["batch_lines_answered"]


def test_expired_lines_go_realtime_in_the_same_run(start_sim, tmp_path) -> None:
    sim = start_sim("--latency-ms", "20", "--batch-seconds", "2", "--batch-expire-after", "0.5")
    inp, out = paths(tmp_path)
    done = cli(*deadline_args(sim, inp, out, "10m"))
    assert done.returncode == 0, done.stderr
    by_route = routes(out)
    stats = sim.stats()
    answered = stats["batch_lines_answered"]
    assert 0 < answered < N and stats["batches_expired"] == 1
    assert by_route == Counter({True: answered, False: N - answered})
    assert stats["received"] == N - answered  # only the expired lines were bought again


def test_a_crash_during_the_switch_then_a_rerun_finishes_every_id_once(start_sim, tmp_path) -> None:
    sim = start_sim(
        "--latency-ms", "300", "--batch-seconds", "1", "--batch-stall-rate", "1",
        "--batch-expire-seconds", "600",
    )  # fmt: skip
    inp, out = paths(tmp_path)
    # An absolute time, so that the rerun has the same deadline.
    when = datetime.fromtimestamp(time.time() + 40, tz=UTC).isoformat()
    args = deadline_args(sim, inp, out, when, "--concurrency", "4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        wait_for(lambda: sim.stats()["batches_cancelled"] >= 1, "the switch", timeout=60)
        wait_for(lambda: sim.stats()["received"] >= 1, "realtime calls", timeout=60)
    finally:
        proc.kill()  # SIGKILL mid-switch: realtime calls in flight, the batch cancelling
        proc.communicate()
    assert any(chunk["batch_id"] for chunk in ledger_chunks(out))
    written_before = len(read_out(out)) if out.exists() else 0
    assert written_before < N
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert routes(out) == Counter({False: N})
    stats = sim.stats()
    assert stats["batches_created"] == 1  # the rerun re-attached, created nothing
    # Bought twice: at most the requests in flight when the first run was killed.
    assert N <= stats["received"] <= N + 4


def test_plan_shows_the_split_and_whether_the_deadline_can_be_met(tmp_path) -> None:
    inp, _ = paths(tmp_path)
    common = ["plan", str(inp), "--model", "gpt-4o-mini", "--rpm", "6", "--json"]
    easy = subprocess.run(
        [sys.executable, "-m", "llmbatch", *common, "--finish-by", "2h"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert easy.returncode == 0, easy.stderr
    plan: dict[str, Any] = json.loads(easy.stdout)["deadline"]
    assert plan["reachable"] and plan["batch_requests"] == N and plan["realtime_requests"] == 0
    assert plan["realtime_seconds"] == 600.0 and plan["realtime_bound_by"] == "rpm"
    tight = subprocess.run(
        [sys.executable, "-m", "llmbatch", *common, "--finish-by", "5m"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert tight.returncode == 1  # not reachable by realtime under --rpm 6
    plan = json.loads(tight.stdout)["deadline"]
    assert not plan["reachable"] and plan["shortfall_seconds"] > 300
    assert plan["needed_limits"]["rpm"] > 6
    speed = subprocess.run(
        [sys.executable, "-m", "llmbatch", *common, "--finish-by", "5m", "--prefer", "speed"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    plan = json.loads(speed.stdout)["deadline"]
    assert 0 < plan["realtime_requests"] < N
    assert plan["realtime_requests"] + plan["batch_requests"] == N


def test_finish_by_refuses_what_cannot_work(tmp_path) -> None:
    inp, out = paths(tmp_path)
    base = ["run", str(inp), "-o", str(out), "--model", "m", "--base-url", "http://127.0.0.1:9"]
    bad = cli(*base, "--finish-by", "soon")
    assert bad.returncode == 2 and "--finish-by" in bad.stderr and "'soon'" in bad.stderr
    ray = cli(*base, "--finish-by", "1h", "--ray")
    assert ray.returncode == 2 and "--finish-by and --ray" in ray.stderr
    assert not out.exists()


# A `--finish-by` already past (or too near for any batch) goes straight to realtime: a
# batch created then would only be cancelled at once, and what it finished bought twice.
@pytest.mark.parametrize("finish_by", ["2020-01-01T00:00:00+00:00", "1s"])
def test_a_past_or_too_near_deadline_creates_no_batch(start_sim, tmp_path, finish_by) -> None:
    sim = start_sim("--latency-ms", "20", "--batch-seconds", "1")
    inp, out = paths(tmp_path)
    done = cli(*deadline_args(sim, inp, out, finish_by))
    assert done.returncode == 0, done.stderr
    assert routes(out) == Counter({False: N})  # every line once, realtime
    stats = sim.stats()
    assert stats["batches_created"] == 0 and stats["batch_lines_answered"] == 0
    assert stats["received"] == N  # each request bought once
