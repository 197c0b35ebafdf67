"""Ctrl-C during the sync API: finished results survive, the rest are marked cancelled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

# Each script first puts SIGINT back to Python's default: a process started in the
# background by a shell without job control (`bash scripts/test.sh &`) inherits SIGINT
# ignored, and Ctrl-C would never reach it. The tests are about a terminal's Ctrl-C.
SCRIPT = r"""
import json, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from llmbatch import *
from llmbatch.clients import FakeClient

client = FakeClient(latency=lambda r: 0.0 if int(r.prompt[1:]) < 10 else 60.0)
def on_progress(p):
    if p.completed == 10:
        print("READY", flush=True)
cfg = BatchProcessorConfig(max_concurrency=5, progress_callback=on_progress)
processor = BatchProcessor(client, cfg)
reqs = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(20)]
try:
    processor.process_batch(reqs)
except BatchInterrupted as exc:
    print(json.dumps([[r.id, type(r.error).__name__ if r.error else None] for r in exc.results]))
    sys.exit(130)
"""


def test_ctrl_c_keeps_finished_results_and_marks_the_rest_cancelled() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY") or not line:
            break
    assert line.startswith("READY"), proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    results = json.loads(out.strip().splitlines()[-1])
    assert [r[0] for r in results] == [f"r{i}" for i in range(20)]
    assert all(r[1] is None for r in results[:10])
    assert all(r[1] == "BatchCancelledError" for r in results[10:])


# A notebook cell: the sync API called while an event loop already runs on this thread, so
# the batch runs on a helper thread. `run_until_complete` leaves SIGINT to Python's default
# handler (as Jupyter does: KeyboardInterrupt in the main thread); `asyncio.run` installs its
# own, which cancels the blocked main task instead.
LOOP_SCRIPT = r"""
import asyncio, json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from llmbatch import *
from llmbatch.clients import OpenAIClient

url, style = sys.argv[1], sys.argv[2]
client = OpenAIClient(base_url=url + "/v1", api_key="k", model="m")
processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=4))
reqs = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(400)]

async def cell():
    print("READY", flush=True)
    try:
        processor.process_batch(reqs)
    except BatchInterrupted as exc:
        kinds = sorted({type(r.error).__name__ for r in exc.results if r.error})
        print(json.dumps({"n": len(exc.results), "ok": sum(r.ok for r in exc.results),
                          "errors": kinds}), flush=True)
        sys.exit(130)
    print("FINISHED", flush=True)

if style == "asyncio.run":
    asyncio.run(cell())
else:
    asyncio.new_event_loop().run_until_complete(cell())
"""


@pytest.mark.parametrize("style", ["run_until_complete", "asyncio.run"])
def test_ctrl_c_inside_a_running_loop_stops_admissions(start_sim: Any, style: str) -> None:
    sim = start_sim("--latency-ms", "250")  # 400 requests at 4 x 4/s: 25 s to the end
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP_SCRIPT, sim.url, style],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("READY")
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    report = json.loads(out.strip().splitlines()[-1])
    # Stopped long before the end (25 s of work; the interrupt came 1.5 s in).
    assert report["n"] == 400 and report["ok"] < 100
    assert report["errors"] == ["BatchCancelledError"]
    received = sim.stats()["received"]
    time.sleep(0.5)
    assert sim.stats()["received"] == received < 100  # nothing admitted after the interrupt
