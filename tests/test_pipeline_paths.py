"""No path of a run may be another's: a side file never replaces the journal or the input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmbatch import ConfigError, RunConfig
from llmbatch.pipeline.paths import check_paths

from .helpers import write_requests


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, ["a", "b"])
    out.write_text('{"custom_id": "a"}\n')  # a journal from an earlier run
    return inp, out


@pytest.mark.parametrize(
    ("field", "target", "named"),
    [
        ("stats_json", "output", "`output`"),
        ("stats_json", "input", "`input`"),
        ("cache", "output", "`output`"),
        ("report", "input", "`input`"),
        ("error_log", "output", "`output`"),
        ("cache", "stats_json", "`stats_json`"),
    ],
)
def test_a_written_path_that_is_another_is_refused(
    files: tuple[Path, Path], tmp_path: Path, field: str, target: str, named: str
) -> None:
    inp, out = files
    paths = {"input": str(inp), "output": str(out), "stats_json": str(tmp_path / "s.json")}
    config = RunConfig(input=str(inp), output=str(out), **{field: paths[target]})  # type: ignore[arg-type]
    if target == "stats_json" and field != "stats_json":
        config = config.replace(stats_json=paths["stats_json"])
    with pytest.raises(ConfigError) as caught:
        check_paths(config)
    assert caught.value.field in (field, target)
    assert named.strip("`") in str(caught.value)


def test_the_batch_ledger_is_no_side_file(files: tuple[Path, Path]) -> None:
    inp, out = files
    ledger = out.with_name(out.name + ".batches.json")
    with pytest.raises(ConfigError, match="batch ledger"):
        check_paths(RunConfig(input=str(inp), output=str(out), stats_json=str(ledger)))


def test_the_cli_refuses_stats_json_over_the_output_and_keeps_both(
    files: tuple[Path, Path],
) -> None:
    inp, out = files
    before_in, before_out = inp.read_bytes(), out.read_bytes()
    for target in (out, inp):
        proc = subprocess.run(
            [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out),
             "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--stats-json", str(target)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"--stats-json {target} is" in proc.stderr
    assert inp.read_bytes() == before_in and out.read_bytes() == before_out
