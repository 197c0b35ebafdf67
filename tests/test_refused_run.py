"""A run refused before anything is sent (a setting, a flag combination, bad input found
after the output was opened) leaves nothing new behind: no empty output, lock, index, cache
file or error-log folder. What an earlier run left, which a resume needs, stays as it was.

The CLI runs as a subprocess against the simulator; `llmbatch.run` is called from Python.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import llmbatch
from llmbatch import RunConfig
from llmbatch.io.journal import Journal

from .helpers import cli, run_args, write_simple


def files_under(root: Path) -> set[str]:
    """Every file and folder under `root`, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# Each refused after the output was opened, the error log's folders made and (but for the
# first two) the cache file created.
REFUSALS = {
    "bad_line": ('{"id": "a", "prompt": "x"}\nnot json\n', (), "line 2"),
    "empty_input": ("\n\n", (), "holds no requests"),
    "no_price_for_max_cost": (None, ("--max-cost", "1", "--model", "no-such-model"), "max-cost"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_run_leaves_nothing_new_behind(tmp_path: Path, start_sim, case: str) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    text, flags, message = REFUSALS[case]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    if text is None:
        write_simple(inp, 3)
    else:
        inp.write_text(text)
    before = files_under(tmp_path)
    extra = ("--cache", str(tmp_path / "cache.db"), "--error-log", str(tmp_path / "logs/deep"))
    proc = cli(*run_args(sim, inp, out, *extra, *flags))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert sim.stats()["received"] == 0
    assert files_under(tmp_path) == before


def test_a_refused_flag_combination_leaves_no_error_log_folder(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 2)
    proc = cli(
        "run", str(inp), "-o", str(out), "--model", "m", "--batch-api", "--ray",
        "--error-log", str(tmp_path / "logs"), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 2 and "--ray" in proc.stderr, proc.stderr
    assert files_under(tmp_path) == {"in.jsonl"}


def test_a_run_refused_for_a_busy_metrics_port_leaves_nothing(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(*run_args(sim, inp, out, "--metrics-port", str(port)))
    assert proc.returncode == 2 and "cannot listen" in proc.stderr
    assert files_under(tmp_path) == {"in.jsonl"}


def test_a_refused_python_run_leaves_nothing_and_the_next_one_runs(
    tmp_path: Path,
    start_sim,  # type: ignore[no-untyped-def]
) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "max_token": 3}\n')
    config = RunConfig(
        input=str(inp), output=str(out), base_url=sim.url + "/v1", model="sim",
        api_key_env="OPENAI_API_KEY",
    )  # fmt: skip
    os.environ.setdefault("OPENAI_API_KEY", "sk-test")
    with pytest.raises(llmbatch.ConfigError, match="line 2"):
        llmbatch.run(config)
    assert files_under(tmp_path) == {"in.jsonl"}
    write_simple(inp, 2)  # fixed: the same output path is free to use
    summary = llmbatch.run(config)
    assert summary.exit_code == 0
    assert len(out.read_text().splitlines()) == 2


def test_a_refused_resume_keeps_the_earlier_output_whole(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 3)
    assert cli(*run_args(sim, inp, out)).returncode == 0
    names = files_under(tmp_path)
    assert {"out.jsonl", "out.jsonl.idx", "out.jsonl.lock"} <= names
    kept = {name: (tmp_path / name).read_bytes() for name in ("out.jsonl", "out.jsonl.idx")}
    inp.write_text(inp.read_text() + "not json\n")
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 2 and "line 4" in proc.stderr
    assert files_under(tmp_path) == names  # the lock file too: it was there before
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    assert sim.stats()["received"] == 3


def test_a_run_refused_for_a_busy_output_leaves_no_error_log_folder(tmp_path: Path) -> None:
    """Another run holds the output (here, its journal open in this process)."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 2)
    holder = Journal(out)
    holder.open()
    try:
        before = files_under(tmp_path)
        proc = cli(
            "run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1",
            "--model", "m", "--error-log", str(tmp_path / "logs"), "--no-progress",
        )  # fmt: skip
    finally:
        holder.close()
    assert proc.returncode == 2 and "another llmbatch run" in proc.stderr, proc.stderr
    assert files_under(tmp_path) == before
