"""`llmbatch.run(RunConfig)` from Python, against the simulator: the CLI's behaviour in
every mode, without a shell. Kills are real `kill -9`s of a Python process."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch import BatchRequest, CompletionRequest, ConfigError, RunConfig, RunControl
from llmbatch.pipeline import ResultWritten, RunStarted

from .conftest import SimProcess
from .helpers import ids_once, read_out, wait_for, write_requests


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


def base(sim: SimProcess, out: Path, **changes: Any) -> RunConfig:
    return RunConfig(output=str(out), base_url=sim.url + "/v1", model="gpt-4o-mini", **changes)


def test_requests_from_python_are_each_written_once(start_sim, tmp_path: Path) -> None:
    sim = start_sim("--latency-ms", "5")
    requests = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"q {i}")) for i in range(40)]
    heard: list[Any] = []
    summary = llmbatch.run(
        base(sim, tmp_path / "out.jsonl", requests=requests, listeners=[heard.append])
    )
    assert summary.exit_code == 0 and summary.written == 40
    assert summary.stats.success_count == 40
    assert set(ids_once(tmp_path / "out.jsonl")) == {f"r{i}" for i in range(40)}
    assert sum(isinstance(e, ResultWritten) for e in heard) == 40
    assert [e.executor for e in heard if isinstance(e, RunStarted)] == ["realtime"]
    # Run again: everything is done, nothing is sent.
    before = sim.stats()["received"]
    again = llmbatch.run(base(sim, tmp_path / "out.jsonl", requests=requests))
    assert again.total == 0 and again.skipped_done == 40 and sim.stats()["received"] == before


def test_a_rerun_sends_an_id_whose_hashes_match_a_finished_one(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finished-id table's hash and check injected so that every id matches every other
    on both: the rerun still skips exactly the finished ids (each match is confirmed against
    the id of the output line it names) and sends the rest; every id ends exactly once."""
    from llmbatch.io.journal import Journal
    from llmbatch.pipeline import runner

    sim = start_sim("--latency-ms", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"c{i}" for i in range(60)]
    write_requests(inp, ids[:40])
    first = llmbatch.run(base(sim, out, input=str(inp)))
    assert first.exit_code == 0 and first.written == 40

    class Colliding(Journal):
        def __init__(self, path: str | Path, **kw: Any) -> None:
            super().__init__(path, id_hash=lambda rid: 7, id_check=lambda rid: 7, **kw)

    monkeypatch.setattr(runner, "Journal", Colliding)
    write_requests(inp, ids)
    sim.reset()
    again = llmbatch.run(base(sim, out, input=str(inp)))
    assert again.exit_code == 0
    assert again.skipped_done == 40 and again.written == 20
    assert sim.stats()["received"] == 20
    assert set(ids_once(out)) == set(ids)


def test_a_one_shot_generator_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    gen = (BatchRequest(f"r{i}", CompletionRequest(prompt="q")) for i in range(3))
    with pytest.raises(ConfigError) as caught:
        llmbatch.run(RunConfig(requests=gen, output=str(tmp_path / "o.jsonl"), model="m"))
    assert caught.value.field == "requests"
    assert not (tmp_path / "o.jsonl").exists()


def test_a_python_run_killed_mid_run_resumes_with_every_id_once(start_sim, tmp_path: Path) -> None:
    sim = start_sim("--latency-ms", "100")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"k{i}" for i in range(300)]
    write_requests(inp, ids)
    script = textwrap.dedent(f"""
        import llmbatch
        llmbatch.run(llmbatch.RunConfig(input={str(inp)!r}, output={str(out)!r},
                     base_url={sim.url + "/v1"!r}, model="m", concurrency=8))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    try:
        wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 30, "30 lines")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = len(ids_once(out))
    assert 30 <= partial < len(ids)
    summary = llmbatch.run(
        RunConfig(input=str(inp), output=str(out), base_url=sim.url + "/v1", model="m")
    )
    assert summary.exit_code == 0
    assert summary.skipped_done == partial and summary.written == len(ids) - partial
    assert set(ids_once(out)) == set(ids)


def test_stop_is_an_interrupt_and_the_same_call_resumes(start_sim, tmp_path: Path) -> None:
    sim = start_sim("--latency-ms", "50")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"s{i}" for i in range(200)])
    control = RunControl()
    written = 0

    def stop_after_ten(event: object) -> None:
        nonlocal written
        if isinstance(event, ResultWritten):
            written += 1
            if written == 10:
                control.stop()

    config = base(sim, out, input=str(inp), concurrency=4, listeners=[stop_after_ten])
    summary = llmbatch.run(config, control=control)
    assert summary.interrupted and summary.exit_code == 130
    assert 10 <= summary.written < 200 and summary.unfinished == 200 - summary.written
    assert len(ids_once(out)) == summary.written
    rest = llmbatch.run(base(sim, out, input=str(inp)))
    assert rest.exit_code == 0 and len(ids_once(out)) == 200


def test_a_cancel_from_outside_propagates_after_closing_the_output(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim("--latency-ms", "50")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"c{i}" for i in range(200)])

    async def main() -> None:
        first = asyncio.Event()

        def heard(event: object) -> None:
            if isinstance(event, ResultWritten):
                first.set()

        config = base(sim, out, input=str(inp), concurrency=4, listeners=[heard])
        task = asyncio.create_task(llmbatch.arun(config))
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert 0 < len(ids_once(out)) < 200
    # The lock was released: the same run goes on.
    assert llmbatch.run(base(sim, out, input=str(inp))).exit_code == 0
    assert len(ids_once(out)) == 200


def test_the_batch_api_from_python_one_batch_per_chunk(start_sim, tmp_path: Path) -> None:
    sim = start_sim("--batch-seconds", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"b{i}" for i in range(45)]
    write_requests(inp, ids)
    config = base(
        sim, out, input=str(inp), batch_api=True, batch_max_requests=10, poll_interval=0.1
    )
    summary = llmbatch.run(config)
    assert summary.exit_code == 0 and summary.executor == "batch_api"
    assert sim.stats()["batches_created"] == math.ceil(len(ids) / 10)
    assert sim.stats()["received"] == 0  # nothing realtime
    assert set(ids_once(out)) == set(ids)
    assert all(rec["llmbatch"]["batch_api"] for rec in read_out(out))


def test_a_deadline_run_from_python_finishes_realtime_when_the_batch_stalls(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim(
        "--latency-ms", "20", "--batch-seconds", "1", "--batch-stall-rate", "1",
        "--batch-expire-seconds", "600",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"d{i}" for i in range(60)])
    summary = llmbatch.run(base(sim, out, input=str(inp), finish_by="12s", poll_interval=0.1))
    assert summary.exit_code == 0 and summary.executor == "deadline"
    assert summary.deadline is not None and summary.deadline.switched_with is not None
    assert summary.deadline.realtime_done == 60
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batches_cancelled"] == 1
    assert stats["received"] == 60 and len(ids_once(out)) == 60


def test_a_budget_from_python_stops_sending_before_the_cap(start_sim, tmp_path: Path) -> None:
    sim = start_sim("--latency-ms", "5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"m{i}" for i in range(100)], max_tokens=100)
    # $1 per 1k output tokens: each request may cost up to $0.1 (its max_tokens).
    config = base(
        sim, out, input=str(inp), max_cost=1.0, price_in=1.0, price_out=1000.0, concurrency=4
    )
    summary = llmbatch.run(config)
    assert summary.budget_stopped and summary.exit_code == 4
    assert 0 < summary.written < 100 and summary.spent <= 1.0
    assert sum(rec["llmbatch"]["cost"] for rec in read_out(out)) <= 1.0
