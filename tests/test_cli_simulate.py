"""`llmbatch simulate` as a real process: starts, serves, counts, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest


def test_simulate_command_serves_limits_and_stops_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "simulate", "--port", "0", "--rpm", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "sim-1"
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()

        def post() -> urllib.request.Request:
            return urllib.request.Request(
                url + "/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            )

        with urllib.request.urlopen(post(), timeout=5) as resp:
            assert resp.headers["x-ratelimit-limit-requests"] == "60"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(post(), timeout=5)
        assert info.value.code == 429 and info.value.headers["retry-after"] == "1"
        with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
        assert stats["received"] == 2 and stats["by_status"] == {"200": 1, "429": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_simulate_rejects_a_bad_rate() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmbatch", "simulate", "--fail-rate", "1.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "--fail-rate" in out.stderr and "between 0 and 1" in out.stderr
