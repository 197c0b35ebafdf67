"""A batch whose create answer was lost is adopted only with proof that it ran this chunk.

Two runs of the same ids with different prompts share one simulator; the second run's create
is carried out but answered 529 (`--batch-lose-create`) or refused without effect
(`--batch-refuse-create`). Anthropic batches carry no metadata, so the first run's batch,
of the same size and minutes old, looks like the second run's lost one: adopting it would
write the first run's answers as the second's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import batch_run_args, cli, ledger_chunks, read_out

IDS = [f"r{i}" for i in range(100)]


def write_prompts(path: Path, word: str) -> None:
    path.write_text(
        "".join(
            json.dumps({"id": rid, "prompt": f"{word} question {rid}", "max_tokens": 16}) + "\n"
            for rid in IDS
        )
    )


def answers(out: Path) -> dict[str, str]:
    return {
        rec["custom_id"]: rec["response"]["body"]["content"][0]["text"] for rec in read_out(out)
    }


@pytest.mark.parametrize("fault", ["--batch-lose-create", "--batch-refuse-create"])
def test_a_lost_anthropic_create_never_adopts_another_runs_batch(
    start_sim, tmp_path, fault
) -> None:
    sim = start_sim("--batch-seconds", "0.3", fault, "2")
    first_in, first_out = tmp_path / "first.jsonl", tmp_path / "first.out.jsonl"
    second_in, second_out = tmp_path / "second.jsonl", tmp_path / "second.out.jsonl"
    write_prompts(first_in, "first")
    write_prompts(second_in, "second")
    one = cli(*batch_run_args(sim, "anthropic", first_in, first_out))
    assert one.returncode == 0, one.stderr
    two = cli(*batch_run_args(sim, "anthropic", second_in, second_out))
    assert two.returncode == 0, two.stderr
    first, second = answers(first_out), answers(second_out)
    assert sorted(second) == sorted(IDS)
    # Its own prompts were answered: not one answer is the first run's.
    assert all(second[rid] != first[rid] for rid in IDS)
    (chunk,) = ledger_chunks(second_out)
    (other,) = ledger_chunks(first_out)
    assert chunk["batch_id"] != other["batch_id"]
    # A lost create is adopted (not created again); a refused one is created once more.
    assert sim.stats()["batches_created"] == 2
