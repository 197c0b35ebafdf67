"""Ctrl-C during the sync API: finished results survive, the rest are marked cancelled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

SCRIPT = r"""
import json, sys
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
