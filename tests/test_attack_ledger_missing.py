"""A deleted ledger with its chunk directory still there: refuse, never submit every line again.

`OUTPUT.batches.json` names the batches a run created; `OUTPUT.batches.d/` keeps each live
chunk's ids. With the ledger gone, a rerun knew of no batch and created every one again
(paid twice). It now stops, saying how to recover.
"""

from __future__ import annotations

import pytest

from llmbatch.batch_api import Ledger, LedgerError, ledger_paths

from .helpers import batch_run_args, cli, ledger_chunks, start_cli, wait_for, write_requests


def test_a_rerun_without_the_ledger_but_with_its_chunks_creates_nothing(
    start_sim, tmp_path
) -> None:
    sim = start_sim("--batch-seconds", "0.3", "--batch-stall-rate", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(6)])
    args = batch_run_args(sim, "anthropic", inp, out)
    proc = start_cli(*args)
    try:
        wait_for(lambda: any(c["batch_id"] for c in ledger_chunks(out)), "the batch created")
    finally:
        proc.kill()
        proc.communicate()
    ledger, directory = ledger_paths(out)
    ledger.unlink()
    rerun = cli(*args)
    assert rerun.returncode == 2, rerun.stderr
    assert f"{ledger} is missing" in rerun.stderr and "Restore it" in rerun.stderr
    assert sim.stats()["batches_created"] == 1
    assert not ledger.exists() and directory.is_dir()


def test_an_empty_chunk_directory_records_nothing_and_is_no_obstacle(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    ledger = Ledger.open(out, provider="openai", base_url="http://x/v1")
    ledger.ensure_directory()
    assert ledger.path.exists()  # saved before the directory: never chunks without it
    (ledger.directory / "chunk-0.ids").write_text('"a"\n')
    ledger.path.unlink()
    with pytest.raises(LedgerError, match="holds batch chunks"):
        Ledger.open(out, provider="openai", base_url="http://x/v1")
    (ledger.directory / "chunk-0.ids").unlink()
    assert Ledger.open(out, provider="openai", base_url="http://x/v1").chunks == []
