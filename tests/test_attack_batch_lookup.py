"""A refused look-up is not a refused batch: nothing is failed (and paid again) on a guess.

After a create whose answer was lost (`--batch-lose-create 1`: the batch exists and runs),
the runner lists batches to find it. A listing refused (`--batch-list-status`: 403, a key
without list permission; 404, a gateway without the route) says nothing of the batch: the
run stops naming the ledger, its lines are not written `batch_failed` (which
`--retry-failed` would submit and pay again) and the chunk stays live for the rerun.
"""

from __future__ import annotations

import pytest

from llmbatch.batch_api import ledger_paths

from .helpers import batch_run_args, cli, ledger_chunks, write_requests


@pytest.mark.parametrize("status", ["403", "404"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_listing_stops_the_run_and_fails_no_line(
    start_sim, tmp_path, provider, status
) -> None:
    sim = start_sim(
        "--batch-seconds", "0.3", "--batch-lose-create", "1", "--batch-list-status", status
    )
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(5)])
    proc = cli(*batch_run_args(sim, provider, inp, out))
    assert proc.returncode == 2, proc.stderr
    assert str(ledger_paths(out)[0]) in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or "batch_failed" not in out.read_text()
    (chunk,) = ledger_chunks(out)
    assert chunk["state"] != "ended"  # the rerun looks for its batch again
    assert sim.stats()["batches_created"] == 1
