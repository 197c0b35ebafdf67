"""`llmbatch run --finish-by --service-tier flex`: late batches finish through flex.

The CLI runs as a subprocess against the simulator (batches on a scaled clock, a flex tier that
refuses a share of requests); what was bought is read from the simulator's /stats. The
deadlines are set so that the decisions do not depend on the machine's speed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

from .helpers import cli, deadline_args, read_out, start_cli, wait_for, write_requests

N = 60


def lanes(out) -> Counter[str]:
    """Lines per lane (batch, flex, default); every id once, every line answered."""
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines).most_common(1)[0][1] == 1
    assert len(lines) == N and all(rec["error"] is None for rec in lines)
    return Counter(
        "batch" if rec["llmbatch"].get("batch_api") else rec["llmbatch"].get("service_tier", "")
        for rec in lines
    )


def test_a_late_batch_finishes_through_flex_at_the_batch_price(start_sim, tmp_path) -> None:
    sim = start_sim(
        "--latency-ms", "20", "--batch-seconds", "1", "--batch-stall-rate", "1",
        "--batch-expire-seconds", "600", "--flex-refusal-rate", "0.3", "--seed", "4",
        "--flex-latency-factor", "1",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(N)])
    done = cli(
        *deadline_args(sim, inp, out, "30s", "--service-tier", "flex", "--price-in", "1",
                       "--price-out", "2")
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    by_lane = lanes(out)
    # Flex takes them; a line flex still refused once the deadline could not wait any more
    # went to the default tier (rare, and never failed).
    assert set(by_lane) <= {"flex", "default"} and by_lane["flex"] >= 0.8 * N
    stats = sim.stats()
    assert stats["batches_cancelled"] == 1 and stats["flex_refused"] > 0
    # Each line bought once; the refusals cost nothing and were sent again.
    assert stats["received"] == N + stats["flex_refused"]
    for rec in read_out(out):
        usage = rec["llmbatch"]["usage"]
        full = (usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1e6
        paid = full / 2 if rec["llmbatch"]["service_tier"] == "flex" else full  # flex: batch price
        assert abs(rec["llmbatch"]["cost"] - paid) < 1e-12


def test_when_flex_keeps_refusing_the_deadline_moves_the_lines_to_default(
    start_sim, tmp_path
) -> None:
    sim = start_sim(
        "--latency-ms", "20", "--batch-seconds", "1", "--batch-stall-rate", "1",
        "--batch-expire-seconds", "600", "--flex-refusal-rate", "1",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(N)])
    done = cli(*deadline_args(sim, inp, out, "20s", "--service-tier", "flex"))
    assert done.returncode == 0, done.stderr
    assert lanes(out) == Counter({"default": N})  # none failed, none left flex-refused
    stats = sim.stats()
    assert stats["flex_refused"] >= N  # each tried flex first
    assert stats["received"] == N + stats["flex_refused"]


def test_plan_shows_the_split_into_batches_and_where_late_ones_go(tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    write_requests(inp, [f"q{i}" for i in range(450)])
    common = ["plan", str(inp), "--model", "gpt-4o-mini", "--rpm", "600", "--json"]
    common += ["--finish-by", "2h"]
    flex = json.loads(cli(*common, "--service-tier", "flex").stdout)["deadline"]
    assert flex["batch_count"] == 5 and flex["batch_size"] == 100  # the floor: 100 a batch
    assert flex["late_lane"] == "flex"
    assert flex["cost_if_every_batch_late"] == flex["cost_batch_part"]  # flex: batch price
    plain = json.loads(cli(*common).stdout)["deadline"]
    assert plain["late_lane"] == "standard"
    assert plain["cost_if_every_batch_late"] > 1.9 * plain["cost_batch_part"]  # full price


def test_a_kill_during_a_mixed_run_then_a_rerun_finishes_every_id_once(start_sim, tmp_path) -> None:
    # Two batches (the split), both stalled; their lines go through flex, which refuses some.
    sim = start_sim(
        "--latency-ms", "300", "--batch-seconds", "1", "--batch-stall-rate", "1",
        "--batch-expire-seconds", "600", "--flex-refusal-rate", "0.3", "--seed", "2",
        "--flex-latency-factor", "1",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(N)])
    # An absolute time, so that the rerun has the same deadline.
    when = datetime.fromtimestamp(time.time() + 40, tz=UTC).isoformat()
    args = deadline_args(
        sim, inp, out, when, "--service-tier", "flex", "--concurrency", "1",
        "--batch-max-requests", "30",
    )  # fmt: skip
    proc = start_cli(*args)
    try:
        wait_for(lambda: sim.stats()["batches_cancelled"] >= 1, "the first move", timeout=60)
        wait_for(lambda: sim.stats()["flex_requests"] >= 2, "flex calls", timeout=60)
    finally:
        proc.kill()  # SIGKILL mid-move: flex calls in flight, batches cancelling or live
        proc.communicate()
    assert sim.stats()["batches_created"] == 2
    written_before = len(read_out(out)) if out.exists() else 0
    assert written_before < N
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    by_lane = lanes(out)  # every id once, every line answered
    assert set(by_lane) <= {"flex", "default"}
    stats = sim.stats()
    assert stats["batches_created"] == 2  # the rerun re-attached both, created none
    # Bought twice: at most the flex calls in flight when the first run was killed
    # (concurrency 1, four times for flex).
    assert stats["received"] - stats["flex_refused"] <= N + 4
