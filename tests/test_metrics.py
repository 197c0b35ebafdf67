"""Prometheus metrics: values after real runs, the HTTP endpoint, the limiter's gauges."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmbatch import RateLimiter, RetryPolicy, ServerError
from llmbatch.clients import FakeClient, OpenAIClient
from llmbatch.engine import Engine, EngineConfig
from llmbatch.events import Event
from llmbatch.io.journal import Journal
from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse

from .conftest import FakeClock, SimProcess
from .helpers import free_port

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from llmbatch.metrics import MetricsListener  # noqa: E402


def reqs(n: int) -> list[BatchRequest]:
    return [
        BatchRequest(f"r{i}", CompletionRequest(prompt=f"question {i}", max_tokens=8))
        for i in range(n)
    ]


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_match_the_output_file_and_are_served_over_http(tmp_path: Path) -> None:
    # Known faults: 500s at random, and a 20 req/s limit that the first burst runs into.
    config = SimulatorConfig(rpm=1200, fail_rate=0.15, latency_ms=5, seed=11)
    metrics = MetricsListener()
    out = tmp_path / "out.jsonl"
    async with Simulator(config) as sim:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk-x", model="sim")
        engine = Engine(
            client,
            EngineConfig(
                max_concurrency=24,
                retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05),
                listeners=[metrics],
            ),
        )
        metrics.watch(engine.limiter)
        with Journal(out) as journal:
            async for result in engine.stream(reqs(80)):
                journal.write(result)
        await client.aclose()
    written = lines(out)
    metas = [w["llmbatch"] for w in written]
    codes = Counter(w["error"]["code"] for w in written if w["error"])
    outcomes = Counter(str(a[2]) for m in metas for a in m["attempt_log"])
    assert codes and outcomes["500"] and outcomes["429"], "the faults must show up"

    with metrics.serve(0) as server:
        async with aiohttp.ClientSession() as http, http.get(server.url) as resp:
            assert resp.status == 200
            scraped = samples(await resp.text())

    def get(name: str, **labels: str) -> float:
        return scraped.get((name, tuple(sorted(labels.items()))), 0.0)

    ok = sum(1 for w in written if w["error"] is None)
    assert get("llmbatch_requests_total", outcome="success", code="ok") == ok
    for code, n in codes.items():
        assert get("llmbatch_requests_total", outcome="failed", code=code) == n
    for outcome, n in outcomes.items():
        assert get("llmbatch_attempts_total", outcome=outcome) == n
    assert get("llmbatch_rate_limited_total") == outcomes["429"]
    attempts = sum(m["attempts"] for m in metas)
    assert get("llmbatch_provider_seconds_count") == attempts
    assert get("llmbatch_admission_wait_seconds_count") == attempts
    assert get("llmbatch_provider_seconds_sum") == pytest.approx(
        sum(a[1] for m in metas for a in m["attempt_log"]), abs=1e-3
    )
    tokens_in = sum(m["usage"]["prompt_tokens"] for m in metas if "usage" in m)
    tokens_out = sum(m["usage"]["completion_tokens"] for m in metas if "usage" in m)
    assert get("llmbatch_tokens_total", direction="input") == tokens_in
    assert get("llmbatch_tokens_total", direction="output") == tokens_out
    assert get("llmbatch_in_flight") == 0 and get("llmbatch_waiting_admission") == 0
    # The adaptive limiter learned the server's stated limit from its headers.
    assert get("llmbatch_limiter_requests_per_minute") == pytest.approx(1200)
    assert get("llmbatch_limiter_paused") in (0.0, 1.0)


async def test_recorded_results_count_like_the_live_listener(clock: FakeClock) -> None:
    # Ray workers and batch APIs send results, not events: `record` must count them the same.
    failures = {f"question {i}": [ServerError("boom")] * (i % 3) for i in range(30)}
    client = FakeClient(latency=0.2, sleep=clock.sleep, failures=failures)
    policy = RetryPolicy(max_attempts=2, base_delay=0.5, rng=random.Random(5))
    live = MetricsListener()
    engine = Engine(
        client,
        EngineConfig(
            max_concurrency=4, retry=policy, clock=clock, sleep=clock.sleep, listeners=[live]
        ),
    )
    results = [r async for r in engine.stream(reqs(30))]
    results.append(BatchResult("from-a-batch-api", error=ServerError("x"), attempts=1))
    live.record(results[-1])
    replayed = MetricsListener()
    for r in results:
        replayed.record(r)

    def values(m: MetricsListener) -> dict[Any, float]:
        got = {}
        for family in m.registry.collect():
            for s in family.samples:
                if not s.name.endswith("_created"):
                    got[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return got

    assert values(replayed) == pytest.approx(values(live), abs=1e-4)  # logs keep 6 decimals
    assert (
        live.value("llmbatch_requests_total", {"outcome": "failed", "code": "server_error"}) == 11
    )
    assert live.value("llmbatch_attempts_total", {"outcome": "500"}) == 31


async def test_in_flight_and_waiting_follow_the_run(clock: FakeClock) -> None:
    limiter = RateLimiter(120, burst_seconds=0, clock=clock, sleep=clock.sleep)
    metrics = MetricsListener()
    seen: list[tuple[float, float]] = []

    def snapshot(_: Event) -> None:
        seen.append(
            (metrics.value("llmbatch_in_flight"), metrics.value("llmbatch_waiting_admission"))
        )

    engine = Engine(
        FakeClient(latency=1.0, sleep=clock.sleep),
        EngineConfig(
            max_concurrency=3,
            limiter=limiter,
            clock=clock,
            sleep=clock.sleep,
            listeners=[metrics, snapshot],
        ),
    )
    results = [r async for r in engine.stream(reqs(9))]
    assert len(results) == 9
    assert max(f for f, _ in seen) >= 1 and max(w for _, w in seen) >= 1
    assert all(0 <= f <= 3 and 0 <= w <= 3 for f, w in seen)
    assert seen[-1] == (0.0, 0.0)


def test_limiter_gauges_read_its_rate_and_pause(clock: FakeClock) -> None:
    limiter = RateLimiter(600, clock=clock, sleep=clock.sleep)
    metrics = MetricsListener()
    metrics.watch(limiter)
    assert metrics.value("llmbatch_limiter_requests_per_minute") == 600
    assert metrics.value("llmbatch_limiter_paused") == 0
    limiter.pause(30)
    clock.advance(10)
    assert metrics.value("llmbatch_limiter_paused") == 1
    assert metrics.value("llmbatch_limiter_pause_remaining_seconds") == pytest.approx(20)

    class ClusterLike:  # the Ray cluster limiter's status() is a dict
        def status(self) -> dict[str, Any]:
            return {"requests_per_minute": 90.0, "paused_for": 0.0}

    other = MetricsListener()
    other.watch(ClusterLike())
    assert other.value("llmbatch_limiter_requests_per_minute") == 90


def test_each_listener_has_its_own_registry() -> None:
    a, b = MetricsListener(), MetricsListener()
    a.record(BatchResult("x", error=ServerError("e"), attempts=1))
    assert a.value("llmbatch_requests_total", {"outcome": "failed", "code": "server_error"}) == 1
    assert b.value("llmbatch_requests_total", {"outcome": "failed", "code": "server_error"}) == 0


# -- the CLI ------------------------------------------------------------------------------------


def test_run_serves_metrics_while_it_runs(tmp_path: Path, start_sim: Any) -> None:
    sim: SimProcess = start_sim("--latency-ms", "150", "--fail-rate", "0.2", "--seed", "4")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(f'{{"id": "q{i}", "prompt": "question {i}"}}\n' for i in range(40)))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--base-url",
         sim.url + "/v1", "--model", "sim", "--no-progress", "--concurrency", "2",
         "--max-retries", "0", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    scraped: dict[Any, float] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    scraped = samples(r.read().decode())
            except OSError:
                time.sleep(0.05)
                continue
            if any(k[0] == "llmbatch_requests_total" and v > 0 for k, v in scraped.items()):
                break
            time.sleep(0.05)
    finally:
        _, err = proc.communicate(timeout=120)
    assert f"metrics at http://127.0.0.1:{port}/metrics" in err
    assert proc.returncode in (0, 1), err
    done = sum(v for k, v in scraped.items() if k[0] == "llmbatch_requests_total")
    assert 0 < done <= 40, "scraped mid-run, counting what was written"
    assert ("llmbatch_in_flight", ()) in scraped
    written = lines(out)
    assert len(written) == 40


def test_a_taken_metrics_port_stops_the_run_before_sending(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": "q0", "prompt": "hello"}\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--base-url",
             "http://127.0.0.1:9/v1", "--model", "m", "--no-progress",
             "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2
    assert f"--metrics-port {port}: cannot listen" in proc.stderr
    assert not out.exists() or out.read_text() == ""


def test_cost_is_summed_from_results_that_have_one() -> None:
    metrics = MetricsListener()
    for i, cost in enumerate((0.0015, None, 0.0025)):
        metrics.record(BatchResult(f"c{i}", response=CompletionResponse("x"), cost=cost))
    assert metrics.value("llmbatch_cost_usd_total") == pytest.approx(0.004)
