"""`llmbatch simulate` as a real process: starts, serves, counts, stops on SIGTERM; its flags;
the `SimulatorProcess` helper that tests and benchmarks start it with."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmbatch.simulate import SimulatorProcess


def test_simulate_command_serves_limits_and_stops_cleanly() -> None:
    with SimulatorProcess("--rpm", "60") as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(sim.url + "/v1/models", timeout=5) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "sim-1"
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()

        def post() -> urllib.request.Request:
            return urllib.request.Request(
                sim.url + "/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            )

        with urllib.request.urlopen(post(), timeout=5) as resp:
            assert resp.headers["x-ratelimit-limit-requests"] == "60"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(post(), timeout=5)
        assert info.value.code == 429 and info.value.headers["retry-after"] == "1"
        stats = sim.stats()
        assert stats["received"] == 2 and stats["by_status"] == {"200": 1, "429": 1}
        sim.reset()
        assert sim.stats()["received"] == 0
    assert sim.proc.returncode == 0  # SIGTERM is a clean stop


def test_simulate_rejects_a_bad_rate() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmbatch", "simulate", "--fail-rate", "1.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "--fail-rate" in out.stderr and "between 0 and 1" in out.stderr


def test_style_flags_reach_the_server(start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim(
        "--limit-style", "anthropic", "--rpm", "600", "--itpm", "6000", "--otpm", "1200",
        "--over-limit-status", "529", "--overload-rate", "0.25",
        "--outage-at", "30", "--outage-for", "2",
    )  # fmt: skip
    with urllib.request.urlopen(sim.url + "/config", timeout=5) as resp:
        config = json.loads(resp.read())
    assert config["limit_style"] == "anthropic" and config["over_limit_status"] == 529
    assert (config["rpm"], config["itpm"], config["otpm"]) == (600, 6000, 1200)
    assert config["overload_rate"] == 0.25
    assert (config["outage_at"], config["outage_for"]) == (30, 2)
    queue = start_sim("--limit-style", "queue", "--slots", "3", "--latency-ms", "5")
    with urllib.request.urlopen(queue.url + "/config", timeout=5) as resp:
        assert json.loads(resp.read())["slots"] == 3
    assert queue.stats()["max_queue_depth"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit-style", "queue", "--rpm", "60"], "queue"),
        (["--outage-at", "5"], "--outage-for"),
        (["--slots", "4"], "--slots"),
        (["--over-limit-status", "500"], "--over-limit-status"),
    ],
)
def test_simulate_rejects_contradictory_flags(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmbatch", "simulate", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_simulator_process_start_up_is_bounded(tmp_path: Path) -> None:
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexec sleep 30\n")
    silent.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        SimulatorProcess(python=str(silent), startup_timeout=0.5)
    assert time.monotonic() - started < 10
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited with 3"):
        SimulatorProcess(python=str(failing))


def test_outage_through_the_command_refuses_then_serves_on_the_same_url() -> None:
    # The command runs on uvloop when installed: the outage must work there too.
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()

    def post(url: str) -> int | str:
        request = urllib.request.Request(
            url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.URLError as exc:
            return type(exc.reason).__name__

    with SimulatorProcess("--outage-at", "0.2", "--outage-for", "1") as sim:
        outcomes = [post(sim.url)]
        deadline = time.monotonic() + 10
        while outcomes[-1] != 200 or "ConnectionRefusedError" not in outcomes:
            assert time.monotonic() < deadline, outcomes
            time.sleep(0.05)
            outcome = post(sim.url)
            if outcome != outcomes[-1]:
                outcomes.append(outcome)
        stats = sim.stats()
    assert outcomes == [200, "ConnectionRefusedError", 200]
    assert stats["outages"] == 1 and not stats["down"]


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--api-key", "K"],
        ["run", "in.jsonl", "-o", "out.jsonl", "--api-key", "K"],
        ["run", "in.jsonl", "-o", "out.jsonl", "--batch"],
        ["plan", "in.jsonl", "--price", "1"],
    ],
)
def test_an_abbreviated_flag_is_refused_not_taken_for_a_longer_one(
    argv: list[str], tmp_path: Path
) -> None:
    # `--api-key K` used to be read as `--api-key-env K`: a key taken for a variable name.
    proc = subprocess.run(
        [sys.executable, "-m", "llmbatch", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert f"unrecognized arguments: {argv[-2] if argv[-1] in ('K', '1') else argv[-1]}" in (
        proc.stderr
    )
