"""Ray: one limit for the cluster, exactly-once output when a worker dies, the Ray Data path.

A local Ray cluster is started once for this module (2 CPUs, no dashboard); the simulator
runs in its own process so that Ray's worker processes can reach it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

ray = pytest.importorskip("ray")

from llmbatch import BatchRequest, CompletionRequest  # noqa: E402
from llmbatch.ray import (  # noqa: E402
    ClientSpec,
    ClusterBreaker,
    ClusterLimiter,
    LLMMapper,
    RayRunConfig,
    run_on_ray,
)
from llmbatch.retry import RetryPolicy  # noqa: E402

from .conftest import SimProcess  # noqa: E402
from .helpers import free_port, scrape  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    # A cluster of its own: on a shared machine ray.init() would join one it finds running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def requests(n: int) -> Iterator[BatchRequest]:
    for i in range(n):
        yield BatchRequest(f"r{i}", CompletionRequest(prompt=f"question {i}", max_tokens=8))


def run(
    sim: SimProcess,
    limiter: ClusterLimiter,
    n: int,
    workers: int,
    concurrency: int | Literal["auto"] = 16,
) -> list:  # type: ignore[type-arg]
    lines: list = []  # type: ignore[type-arg]
    asyncio.run(
        run_on_ray(
            requests(n),
            ClientSpec(base_url=sim.url + "/v1", model="sim"),
            limiter,
            RayRunConfig(workers=workers, concurrency=concurrency),
            lines.extend,
        )
    )
    return lines


def test_four_workers_share_one_limit() -> None:
    sim = SimProcess("--latency-ms", "50", "--rpm", "1200")
    try:
        lines = run(sim, ClusterLimiter.create(requests_per_minute=1200), 400, 4)
        stats = sim.stats()
    finally:
        sim.close()
    counts = Counter(cid for cid, _, _ in lines)
    assert len(counts) == 400 and set(counts.values()) == {1}
    assert all(ok for _, _, ok in lines)
    # Four workers each pacing at the full rate would draw hundreds of 429s. One shared limit
    # draws none, but it paces only 2% under the server's rate from an empty bucket (after
    # the opening burst), so on a loaded machine a worker's late event loop can bunch two
    # slots into one 429: allow that, not more.
    assert stats["rate_limited"] <= 2
    # Four workers pacing themselves would finish in a quarter of the time (and draw 429s):
    # one shared limit cannot beat 400 requests at 20/s minus the one-second burst, as the
    # server saw them arrive.
    makespan = stats["last_answered"] - stats["first_received"]
    assert makespan >= (400 - 20) / 20 * 0.98


def test_with_no_limit_given_the_cluster_converges() -> None:
    sim = SimProcess("--latency-ms", "50", "--rpm", "1200")
    try:
        lines = run(sim, ClusterLimiter.create(), 400, 4)
        stats = sim.stats()
    finally:
        sim.close()
    assert len({cid for cid, _, _ in lines}) == 400 and len(lines) == 400
    assert all(ok for _, _, ok in lines)
    assert stats["rate_limited"] <= 0.15 * 400


def test_with_no_header_at_all_the_cluster_still_converges() -> None:
    # A bare 429 says nothing: the actor's limiter probes (CUBIC) for all workers at once,
    # one cut per congestion event however many workers saw it.
    sim = SimProcess("--latency-ms", "50", "--rpm", "1200", "--limit-style", "bare")
    try:
        lines = run(sim, ClusterLimiter.create(), 300, 4)
        stats = sim.stats()
    finally:
        sim.close()
    assert len({cid for cid, _, _ in lines}) == 300 and all(ok for _, _, ok in lines)
    # The opening is paced, a worker books at most a slice ahead, a cut voids the slots its
    # waiters sleep for, and a lease of the opening holds at most 20 ms of it (a lease of 64
    # slots, more than a worker sent before the first refusal, kept the actor's cut from
    # reaching the other workers: 3-34 refusals, most sent after the cut), and the opening is
    # a slow start clocked by answers, 1.5x per round (it doubled with wall time: on a loaded
    # machine every worker sent at full width before the first refusal was read), and a
    # lease's reply read late holds slots as old as the delay (they were sent as fresh), and a
    # lease's slots in the opening are spread over its 20 ms (with two CPU burners, a starved
    # worker's 8-14 slots due at once went out together after the bucket emptied: 13-22).
    assert stats["over_limit"] <= 15


def test_auto_concurrency_on_workers_keeps_a_queueing_server_busy_without_a_long_queue() -> None:
    # Each worker's own gate reads the shared server's latency: together they keep its two
    # slots busy; a fixed 16 per worker would queue all 32 sent at once.
    sim = SimProcess("--limit-style", "queue", "--slots", "2", "--latency-ms", "50")
    try:
        lines = run(sim, ClusterLimiter.create(), 120, 2, concurrency="auto")
        stats = sim.stats()
    finally:
        sim.close()
    assert len({cid for cid, _, _ in lines}) == 120 and all(ok for _, _, ok in lines)
    assert stats["max_queue_depth"] <= 12


def test_split_output_token_budget_is_shared_by_the_cluster() -> None:
    # 8 output tokens a request (max_tokens) at 1920 output tokens/min: 4 requests a second
    # for the whole cluster, whatever the number of workers.
    sim = SimProcess("--latency-ms", "20", "--otpm", "1920", "--limit-style", "anthropic")
    try:
        lines = run(sim, ClusterLimiter.create(output_tokens_per_minute=1920), 40, 2)
        stats = sim.stats()
    finally:
        sim.close()
    assert len(lines) == 40 and all(ok for _, _, ok in lines)
    assert stats["over_limit"] == 0
    makespan = stats["last_answered"] - stats["first_received"]
    assert makespan >= (40 - 4) / 4 * 0.9  # one shared budget, less the first second's burst


def test_ray_data_mapper_adds_result_columns() -> None:
    sim = SimProcess("--latency-ms", "10")
    try:
        ds = ray.data.from_items([{"key": i, "text": f"document {i}"} for i in range(120)])
        out = ds.map_batches(
            LLMMapper,
            fn_constructor_kwargs={
                "client": ClientSpec(base_url=sim.url + "/v1", model="sim"),
                "template": "Summarize: {text}",
                "limiter": ClusterLimiter.create(requests_per_minute=6000),
                "max_tokens": 16,
            },
            concurrency=2,
            batch_size=30,
            num_cpus=0.5,
        ).take_all()
        received = sim.stats()["received"]
    finally:
        sim.close()
    assert sorted(row["key"] for row in out) == list(range(120))
    assert all(row["error"] is None and row["content"] for row in out)
    assert all(row["attempts"] == 1 and row["completion_tokens"] > 0 for row in out)
    assert received == 120


def test_ray_data_mappers_share_the_clusters_outage_breaker() -> None:
    # `LLMMapper(breaker=)`: the mappers wait an outage out behind the cluster's one breaker
    # (two retries each would not survive it) and its actor records the outage once, for
    # the driver to report. Without the wiring each mapper kept a breaker of its own and the
    # cluster's recorded nothing.
    sim = SimProcess("--latency-ms", "30", "--outage-at", "0.5", "--outage-for", "2")
    breaker = ClusterBreaker.create(max_outage=60)
    try:
        ds = ray.data.from_items([{"key": i, "text": f"document {i}"} for i in range(300)])
        out = ds.map_batches(
            LLMMapper,
            fn_constructor_kwargs={
                "client": ClientSpec(base_url=sim.url + "/v1", model="sim"),
                "template": "Summarize: {text}",
                "limiter": ClusterLimiter.create(requests_per_minute=6000),
                "max_tokens": 16,
                "concurrency": 8,
                "retry": RetryPolicy(max_attempts=3),
                "breaker": breaker,
            },
            concurrency=2,
            batch_size=50,
            num_cpus=0.5,
        ).take_all()
        down = sim.stats()["outages"]
        outages = asyncio.run(breaker.outages())
    finally:
        sim.close()
    assert sorted(row["key"] for row in out) == list(range(300))
    assert all(row["error"] is None and row["content"] for row in out)
    assert down == 1
    assert len(outages) == 1 and outages[0].recovered, outages


def test_cli_on_ray_survives_a_killed_worker(tmp_path: Path) -> None:
    import psutil

    sim = SimProcess("--latency-ms", "100")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(600)]
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in ids))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmbatch",
            "run",
            str(inp),
            "-o",
            str(out),
            "--ray",
            "--workers",
            "3",
            "--concurrency",
            "8",
            "--base-url",
            sim.url + "/v1",
            "--model",
            "sim",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 150:
                break
            time.sleep(0.05)

        # Only this run's workers (descendants of its driver): on a shared machine other
        # Ray runs have `_BatchWorker` processes too.
        def cmdline(p: psutil.Process) -> list[str]:
            try:
                return p.cmdline()
            except psutil.Error:  # gone meanwhile
                return []

        victims = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if any("_BatchWorker" in part for part in cmdline(p))
        ]
        assert victims, "no Ray worker process found"
        os.kill(victims[0].pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        # The dead worker's chunks were redone elsewhere: some requests were sent twice...
        assert sim.stats()["received"] > 600
    finally:
        if proc.poll() is None:
            proc.kill()
        sim.close()
    # ...yet every id has exactly one line.
    counts = Counter(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert set(counts) == set(ids) and set(counts.values()) == {1}


def ray_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "llmbatch", "run", *args, "--ray", "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_on_ray_waits_out_an_outage_and_reports_it_once(tmp_path: Path) -> None:
    # The workers share one outage breaker: the run waits the outage out (2 retries each
    # would not survive it) and the driver's summary reports it once, as a local run does
    # (before, each worker kept its own breaker and its outages: the summary said nothing).
    sim = SimProcess("--latency-ms", "30", "--outage-at", "0.5", "--outage-for", "3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(300)]
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in ids))
    try:
        proc = ray_cli(
            str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "sim",
            "--no-progress", "--concurrency", "8", "--max-retries", "2",
        )  # fmt: skip
        outages = sim.stats()["outages"]
    finally:
        sim.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in lines) == sorted(ids)
    assert all(r["error"] is None for r in lines)
    said = proc.stdout + proc.stderr
    assert outages == 1 and said.count("server outage") == 1 and "came back" in said, said


def test_cli_on_ray_serves_the_clusters_in_flight_and_waiting_gauges(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    # The engines run in the workers; the driver's gauges are the cluster limiter's sums of
    # their reports. 2 workers of 4 at 2 requests a second, answers after 1 s: about 2 in
    # flight and the rest waiting for a slot, never more than the 8 the workers hold.
    sim = SimProcess("--latency-ms", "1000")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "q"}) + "\n" for i in range(30)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--ray",
         "--workers", "2", "--concurrency", "4", "--rpm", "120", "--base-url", sim.url + "/v1",
         "--model", "sim", "--no-progress", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    seen: list[tuple[float, float]] = []
    rates: set[float] = set()
    try:
        deadline = time.monotonic() + 120
        # Scraped often up to the process's end: a scrape that reached Ray after the run
        # shut it down ended the process with an error (it failed CI once).
        while time.monotonic() < deadline and proc.poll() is None:
            got = scrape(port)
            if "llmbatch_in_flight" in got:
                seen.append((got["llmbatch_in_flight"], got["llmbatch_waiting_admission"]))
            if "llmbatch_limiter_requests_per_minute" in got:
                rates.add(got["llmbatch_limiter_requests_per_minute"])
            time.sleep(0.05)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        sim.close()
    assert proc.returncode == 0, err[-2000:]
    assert len(out.read_text().splitlines()) == 30
    assert any(f >= 1 for f, _ in seen) and any(w >= 1 for _, w in seen), seen
    assert all(f + w <= 8 for f, w in seen), seen
    assert rates == {120.0}, rates  # the cluster limiter's rate, as the loop last read it


def test_cli_on_ray_with_a_cache_and_an_error_log(tmp_path: Path) -> None:
    sim = SimProcess("--fail-rate", "0.3", "--seed", "4")
    inp, logs, cache = tmp_path / "in.jsonl", tmp_path / "logs", tmp_path / "cache.db"
    ids = [f"q{i}" for i in range(60)]
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in ids))
    common = ["--base-url", sim.url + "/v1", "--model", "sim", "--no-progress"]
    try:
        first = ray_cli(
            str(inp), "-o", str(tmp_path / "a.jsonl"), *common,
            "--max-retries", "0", "--cache", str(cache), "--error-log", str(logs),
        )  # fmt: skip
        assert first.returncode == 1, first.stderr[-2000:]
        records = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
        failed = {r["custom_id"] for r in records if r["error"]}
        assert sorted(r["custom_id"] for r in records) == sorted(ids) and failed
        # The driver's sink logged each failure, with its prompt.
        logged = [json.loads(x) for p in logs.iterdir() for x in p.read_text().splitlines()]
        assert {e["request_id"] for e in logged} == failed
        assert all(e["prompt"] == f"question {e['request_id']}" for e in logged)
        # A second run answers every success from the cache: only the failures are sent.
        sim.reset()
        second = ray_cli(
            str(inp), "-o", str(tmp_path / "b.jsonl"), *common,
            "--max-retries", "0", "--cache", str(cache),
        )  # fmt: skip
        assert second.returncode in (0, 1), second.stderr[-2000:]
        assert sim.stats()["received"] == len(failed)
        cached = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
        assert len(cached) == 60 and sum(r["llmbatch"]["cached"] for r in cached) == 60 - len(
            failed
        )
    finally:
        sim.close()


def test_cli_on_ray_stops_when_the_output_disk_is_full(tmp_path: Path) -> None:
    from .filesystems import tiny_fs

    sim = SimProcess("--latency-ms", "5")
    inp = tmp_path / "in.jsonl"
    ids = [f"q{i}" for i in range(2000)]
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in ids))
    common = ["--base-url", sim.url + "/v1", "--model", "sim", "--no-progress"]
    try:
        with tiny_fs(tmp_path) as disk:
            out = disk / "out.jsonl"
            proc = ray_cli(str(inp), "-o", str(out), *common, "--concurrency", "8")
            assert proc.returncode == 3, proc.stderr[-2000:]
            assert f"cannot write {out}: [Errno 28] No space left on device" in proc.stderr
            written = out.read_bytes().count(b"\n")
            # Two workers, two chunks of 8 each in flight: nothing beyond those was sent.
            assert written > 0 and sim.stats()["received"] <= written + 2 * 2 * 8 + 8
            moved = tmp_path / "out.jsonl"
            moved.write_bytes(out.read_bytes())
        sim.reset()
        again = ray_cli(str(inp), "-o", str(moved), *common, "--concurrency", "8")
        assert again.returncode == 0, again.stderr[-2000:]
        assert sim.stats()["received"] == 2000 - written
    finally:
        sim.close()
    counts = Counter(json.loads(line)["custom_id"] for line in moved.read_text().splitlines())
    assert set(counts) == set(ids) and set(counts.values()) == {1}


def test_cli_on_ray_shares_one_budget_and_a_rerun_finishes(tmp_path: Path) -> None:
    import genai_prices

    def billed(stats: dict[str, int]) -> float:
        usage = genai_prices.Usage(
            input_tokens=stats["prompt_tokens"], output_tokens=stats["completion_tokens"]
        )
        price = genai_prices.calc_price(usage, model_ref="gpt-4o-mini", provider_id="openai")
        return float(price.total_price)

    sim = SimProcess("--latency-ms", "20")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(120)]
    prompt = "question about " + "things " * 60
    inp.write_text(
        "".join(json.dumps({"id": i, "prompt": prompt + i, "max_tokens": 16}) + "\n" for i in ids)
    )
    common = [str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "gpt-4o-mini"]
    cap = 0.0008  # about a quarter of the whole run: each of two workers alone could pass it
    try:
        first = ray_cli(*common, "--concurrency", "8", "--no-progress", "--max-cost", str(cap))
        assert first.returncode == 4, first.stderr[-2000:]
        done = out.read_text().splitlines()
        stats = sim.stats()
        assert billed(stats) <= cap and stats["received"] == len(done) and 0 < len(done) < 120
        sim.reset()
        second = ray_cli(*common, "--no-progress", "--max-cost", "1")
        assert second.returncode == 0, second.stderr[-2000:]
        assert sim.stats()["received"] == 120 - len(done)  # nothing bought twice
    finally:
        sim.close()
    counts = Counter(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert set(counts) == set(ids) and set(counts.values()) == {1}


def test_schema_requests_are_validated_and_re_asked_on_workers() -> None:
    # The schema travels with each request (pickled without its compiled validator) and the
    # reply policy with the run's config; parsed objects come back to the driver.
    from llmbatch.replies import ReplyPolicy
    from llmbatch.schema import Schema

    schema = Schema.from_dict(
        {
            "type": "object",
            "properties": {"label": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
            "required": ["label", "n"],
            "additionalProperties": False,
        }
    )
    sim = SimProcess("--invalid-rate", "0.5")
    results: list = []  # type: ignore[type-arg]
    try:
        asyncio.run(
            run_on_ray(
                (
                    BatchRequest(f"s{i}", CompletionRequest(prompt=f"q {i}", schema=schema))
                    for i in range(40)
                ),
                ClientSpec(base_url=sim.url + "/v1", model="sim"),
                ClusterLimiter.create(),
                RayRunConfig(workers=2, concurrency=8, replies=ReplyPolicy(max_invalid_retries=10)),
                on_results=results.extend,
            )
        )
        stats = sim.stats()
    finally:
        sim.close()
    assert sorted(r.id for r in results) == sorted(f"s{i}" for i in range(40))
    assert all(r.error is None and r.parsed["label"] in ("a", "b") for r in results)
    assert stats["invalid"] > 0 and stats["received"] == sum(r.attempts for r in results)


def test_flex_refusals_are_moved_to_default_on_workers() -> None:
    # The tier policy travels with the run's config: "auto" moves what flex keeps refusing.
    from llmbatch.tiers import TierPolicy, served_tier, with_tier

    sim = SimProcess("--flex-refusal-rate", "1")
    results: list = []  # type: ignore[type-arg]
    try:
        asyncio.run(
            run_on_ray(
                (
                    BatchRequest(f"f{i}", with_tier(CompletionRequest(prompt=f"q {i}"), "flex"))
                    for i in range(20)
                ),
                ClientSpec(base_url=sim.url + "/v1", model="sim"),
                ClusterLimiter.create(),
                RayRunConfig(workers=2, concurrency=4, tiers=TierPolicy(fallback="default")),
                on_results=results.extend,
            )
        )
        stats = sim.stats()
    finally:
        sim.close()
    assert sorted(r.id for r in results) == sorted(f"f{i}" for i in range(20))
    assert all(r.error is None and served_tier(r.response) == "default" for r in results)
    assert stats["flex_refused"] == 3 * 20


def test_prompt_cache_groups_and_marks_requests_sent_through_ray(tmp_path: Path) -> None:
    import random

    import llmbatch

    sim = SimProcess()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    system = "Rules and worked examples for the task. " * 120  # ~1,200 tokens
    lines = [
        {"id": f"g{g}-{i}", "system": f"Prefix {g}. {system}", "prompt": f"q{i}"}
        for g in range(3)
        for i in range(20)
    ]
    random.Random(2).shuffle(lines)
    inp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-test")
    try:
        summary = llmbatch.run(
            llmbatch.RunConfig(
                input=str(inp), output=str(out), provider="anthropic", base_url=sim.url,
                model="claude-sonnet-4-5", ray=True, workers=2, concurrency=4,
            )
        )  # fmt: skip
        stats = sim.stats()
    finally:
        sim.close()
    assert summary.exit_code == 0 and summary.executor == "ray"
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert Counter(r["custom_id"] for r in records) == Counter(line["id"] for line in lines)
    assert stats["by_status"] == {"200": 60}  # every breakpoint accepted
    # No warm-up on Ray (a chunk is sent at once): each worker's first chunk of a prefix may
    # write it, the rest read it.
    assert 3 <= stats["cache_writes"] <= 3 * 2 * 4
    assert stats["cache_hits"] == 60 - stats["cache_writes"]
