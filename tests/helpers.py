"""Helpers shared by test files: input and output files, waiting, the CLI as a subprocess,
virtual time for many sleepers at once (`SteppedClock`)."""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import orjson

from llmbatch.batch_api import ledger_paths
from llmbatch.simulate import SimulatorProcess


def write_requests(path: Path, ids: list[str], *, max_tokens: int = 16, **extra: Any) -> None:
    """A JSONL input: one chat prompt per id."""
    lines = [
        json.dumps({"id": rid, "prompt": f"question {rid}", "max_tokens": max_tokens, **extra})
        for rid in ids
    ]
    path.write_text("".join(line + "\n" for line in lines))


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ids_once(path: Path) -> Counter[str]:
    """The ids of an output file, asserting none appears twice."""
    counts = Counter(rec["custom_id"] for rec in read_out(path))
    assert not counts or counts.most_common(1)[0][1] == 1, counts.most_common(3)
    return counts


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the CLI as users run it: a real subprocess, keys only fake ones ---------------------------

KEYS = {
    "OPENAI_API_KEY": "sk-test",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "GEMINI_API_KEY": "gm-test-key-123456",
}


def clean_env(extra: dict[str, str] | None = None, *, keys: bool = True) -> dict[str, str]:
    """This machine's environment without any real API key, with fake ones (`KEYS`, unless
    `keys` is false), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return {**env, **(KEYS if keys else {}), **(extra or {})}


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
    keys: bool = True,
    **kw: Any,
) -> subprocess.CompletedProcess[str]:
    """`llmbatch ARGS...` run to its end, with the fake `KEYS` unless `keys` is false."""
    return subprocess.run(
        [sys.executable, "-m", "llmbatch", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(env, keys=keys),
        timeout=timeout,
        **kw,
    )


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`llmbatch ARGS...` started, to be killed or waited for by the test."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(env),
    )


def run_args(sim: SimulatorProcess, inp: Path, out: Path, *extra: str) -> list[str]:
    """`llmbatch run` against the simulator's OpenAI-style API, realtime."""
    return [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1",
        "--model", "sim", "--no-progress", *extra,
    ]  # fmt: skip


BATCH_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
}


def batch_run_args(
    sim: SimulatorProcess, provider: str, inp: Path, out: Path, *extra: str
) -> list[str]:
    """`llmbatch run --batch-api` against the simulator's OpenAI, Anthropic or Gemini batch API."""
    base = sim.url + "/v1" if provider == "openai" else sim.url
    model = BATCH_MODELS[provider]
    return [
        "run", str(inp), "-o", str(out), "--provider", provider, "--base-url", base,
        "--model", model, "--batch-api", "--poll-interval", "0.1", "--no-progress", *extra,
    ]  # fmt: skip


def write_simple(path: Path, n: int, prefix: str = "q") -> list[str]:
    """A JSONL input of `n` prompts with ids PREFIX0..; returns the ids."""
    ids = [f"{prefix}{i}" for i in range(n)]
    write_requests(path, ids)
    return ids


def wait_for_lines(path: Path, n: int, timeout: float = 60) -> int:
    """Wait until `path` has at least `n` lines; return how many it has."""
    count = 0

    def enough() -> bool:
        nonlocal count
        count = path.read_bytes().count(b"\n") if path.exists() else 0
        return count >= n

    wait_for(enough, f"{n} lines in {path}", timeout)
    return count


def ledger_chunks(out: Path) -> list[dict[str, Any]]:
    """The chunks the batch ledger beside `out` records ([] while there is none)."""
    path = ledger_paths(out)[0]
    try:
        chunks: list[dict[str, Any]] = orjson.loads(path.read_bytes())["chunks"]
    except (OSError, orjson.JSONDecodeError):
        return []
    return chunks


class SteppedClock:
    """Virtual time in which many tasks sleep at once: `advance_to` wakes them in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._seq, future))
        await future

    async def advance_to(self, until: float) -> None:
        await _settle()
        while self._timers and self._timers[0][0] <= until:
            wake, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
            await _settle()
        self.now = max(self.now, until)


async def _settle() -> None:
    """Let every task that can run now, run, before time moves on: a chain of hand-offs (an
    asyncio.Lock wakes one waiter at a time) takes many turns of the loop, and a fixed few
    left waiters asleep until the next timer, seconds of virtual time later."""
    loop = asyncio.get_running_loop()
    for turn in range(100_000):
        await asyncio.sleep(0)
        if turn >= 10 and not getattr(loop, "_ready", True):
            return


class _Ref:
    """What `.remote()` returns: awaiting it yields once, as a round trip would."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        yield from asyncio.sleep(0).__await__()
        return self.value


class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> _Ref:
        return _Ref(self.fn(*args))


class LocalActor:
    """A Ray actor's state in this process: `actor.lease.remote(...)` runs the state's method
    at once; awaiting the result yields once, as a round trip would (virtual-time tests)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self.state, name))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for `--metrics-port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples served at 127.0.0.1:`port`/metrics ({} if it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def deadline_args(
    sim: SimulatorProcess, inp: Path, out: Path, finish_by: str, *extra: str
) -> list[str]:
    """`llmbatch run` with `--finish-by` against the simulator's batch API, polled fast."""
    return [
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        sim.url + "/v1",
        "--model",
        "gpt-4o-mini",
        "--finish-by",
        finish_by,
        "--poll-interval",
        "0.1",
        "--no-progress",
        *extra,
    ]
