"""`llmbatch run` and `llmbatch stats` as real subprocesses against the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import SimProcess
from .filesystems import fill, readonly_fs, tiny_fs
from .helpers import cli, read_out, run_args, start_cli, wait_for_lines, write_simple


def test_both_line_formats_give_one_output_line_per_id(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        {"id": "s1", "prompt": "hello", "temperature": 0.2, "max_tokens": 10},
        {"id": 7, "prompt": "numeric id", "response_format": "json"},
        {
            "custom_id": "b1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.5},
        },
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "emb", "input": "vector me"},
        },
        {
            "custom_id": "c1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "Once upon"},
        },
    ]
    inp.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 0, proc.stderr
    records = {r["custom_id"]: r for r in read_out(out)}
    assert set(records) == {"s1", "7", "b1", "e1", "c1"}
    assert len(read_out(out)) == 5
    for r in records.values():
        assert r["error"] is None and r["response"]["status_code"] == 200
        assert r["id"].startswith("batch_req_") and r["llmbatch"]["attempts"] == 1
    assert json.loads(records["7"]["response"]["body"]["choices"][0]["message"]["content"])
    assert records["e1"]["response"]["body"]["object"] == "list"
    assert records["c1"]["response"]["body"]["object"] == "text_completion"
    assert sim.stats()["by_path"] == {"chat": 3, "embeddings": 1, "completions": 1}


def test_files_template_one_request_per_file(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/a.py", "pkg/b.py", "pkg/sub/c.py", "pkg/notes.txt"):
        (tmp_path / name).write_text(f"# {name}\nprint('x')\n")
    proc = cli(
        "run",
        "--template",
        "Summarize this file {path}: {content}",
        "--files",
        "pkg/**/*.py",
        "-o",
        "out.jsonl",
        "--base-url",
        sim.url + "/v1",
        "--model",
        "sim",
        "--json",
        "--no-progress",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    ids = sorted(r["custom_id"] for r in read_out(tmp_path / "out.jsonl"))
    assert ids == ["pkg/a.py", "pkg/b.py", "pkg/sub/c.py"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_rows_template(tmp_path: Path, start_sim, kind: str) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    rows = tmp_path / f"data.{kind}"
    if kind == "csv":
        rows.write_text("key,title\nk1,First\nk2,Second\n")
    else:
        rows.write_text('{"key": "k1", "title": "First"}\n{"key": "k2", "title": "Second"}\n')
    out = tmp_path / "out.jsonl"
    proc = cli(
        "run",
        "--template",
        "Classify: {title}",
        "--rows",
        str(rows),
        "--id-field",
        "key",
        "-o",
        str(out),
        "--base-url",
        sim.url + "/v1",
        "--model",
        "sim",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == ["k1", "k2"]


def test_resume_after_kill_9_sends_only_what_is_missing(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "40")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 300)
    proc = start_cli(*run_args(sim, inp, out, "--concurrency", "8"))
    wait_for_lines(out, 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    written = {r["custom_id"] for r in read_out_tolerant(out)}
    assert 120 <= len(written) < 300
    sim.reset()
    again = cli(*run_args(sim, inp, out, "--concurrency", "8"))
    assert again.returncode == 0, again.stderr
    counts = Counter(r["custom_id"] for r in read_out(out))
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    # Finished ids were not requested again.
    assert sim.stats()["received"] == 300 - len(written)


def read_out_tolerant(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().split(b"\n") if x.endswith(b"}")]


def test_ctrl_c_exits_130_with_an_intact_journal(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "40")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 300)
    proc = start_cli(*run_args(sim, inp, out, "--concurrency", "8"))
    wait_for_lines(out, 60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = read_out(out)
    assert len({r["custom_id"] for r in records}) == len(records)
    assert all(r["error"] is None for r in records)  # cancelled requests are not written
    again = cli(*run_args(sim, inp, out, "--concurrency", "8"))
    assert again.returncode == 0, again.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == sorted(ids)


def test_failed_lines_are_kept_until_retry_failed(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    flaky = start_sim("--fail-rate", "0.5", "--seed", "3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 60)
    first = cli(*run_args(flaky, inp, out, "--max-retries", "0"))
    assert first.returncode == 1, first.stderr
    failed = {r["custom_id"] for r in read_out(out) if r["error"]}
    assert failed and all(r["error"]["code"] == "server_error" for r in read_out(out) if r["error"])
    flaky.reset()
    second = cli(*run_args(flaky, inp, out, "--max-retries", "0"))
    assert second.returncode == 1
    assert flaky.stats()["received"] == 0  # errors are results too: not redone by default
    healthy = start_sim()
    third = cli(*run_args(healthy, inp, out, "--retry-failed"))
    assert third.returncode == 0, third.stderr
    records = read_out(out)
    assert sorted(r["custom_id"] for r in records) == sorted(ids)  # one line per id
    assert all(r["error"] is None for r in records)
    assert healthy.stats()["received"] == len(failed)


def test_cache_hits_cost_no_requests(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp = tmp_path / "in.jsonl"
    write_simple(inp, 25)
    cache = tmp_path / "cache.db"
    first = cli(*run_args(sim, inp, tmp_path / "a.jsonl", "--cache", str(cache)))
    assert first.returncode == 0, first.stderr
    assert sim.stats()["received"] == 25
    sim.reset()
    second = cli(
        *run_args(
            sim,
            inp,
            tmp_path / "b.jsonl",
            "--cache",
            str(cache),
            "--stats-json",
            str(tmp_path / "s.json"),
        )
    )
    assert second.returncode == 0, second.stderr
    assert sim.stats()["received"] == 0
    b = read_out(tmp_path / "b.jsonl")
    assert len(b) == 25 and all(r["llmbatch"]["cached"] for r in b)
    a = {r["custom_id"]: r["response"]["body"] for r in read_out(tmp_path / "a.jsonl")}
    assert all(a[r["custom_id"]] == r["response"]["body"] for r in b)
    assert json.loads((tmp_path / "s.json").read_text())["cached_count"] == 25
    # A different model is a different key: not answered from the cache.
    third = cli(*run_args(sim, inp, tmp_path / "c.jsonl", "--cache", str(cache), "--model", "x"))
    assert third.returncode == 0 and sim.stats()["received"] == 25


BAD_CASES = {
    "malformed": ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n', "line 2: malformed JSON"),
    "no_id": (
        '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"prompt": "z"}\n',
        "line 3: id must be",
    ),
    "duplicate": (
        '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n',
        "line 3: duplicate id 'a' (first on line 1)",
    ),
    "url": (
        '{"id": "a", "prompt": "x"}\n'
        '{"custom_id": "b", "url": "/v1/images/generations", "body": {}}\n',
        "line 2: url '/v1/images/generations' is not supported",
    ),
    "unknown_simple_field": (
        '{"id": "a", "prompt": "x", "max_token": 5}\n',
        "line 1: unknown field 'max_token'",
    ),
    "empty": ("\n\n", "holds no requests"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_stops_before_sending_and_names_the_line(
    tmp_path: Path,
    start_sim,
    case: str,  # type: ignore[no-untyped-def]
) -> None:
    sim = start_sim()
    text, message = BAD_CASES[case]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(text)
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert sim.stats()["received"] == 0


def test_non_utf8_and_oversized_prompt(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "caf\xe9"}\n')
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 2 and "line 2: not valid UTF-8" in proc.stderr
    inp.write_text(
        '{"id": "a", "prompt": "x"}\n' + json.dumps({"id": "big", "prompt": "w " * 200}) + "\n"
    )
    proc = cli(*run_args(sim, inp, out, "--max-input-tokens", "50"))
    assert proc.returncode == 2 and "line 2: prompt is ~100 tokens" in proc.stderr
    assert sim.stats()["received"] == 0


def test_skip_mode_reports_bad_lines_and_runs_the_rest(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        '{"id": "a", "prompt": "x"}\nnot json\n'
        '{"id": "c", "prompt": "z"}\n{"id": "a", "prompt": "dup"}\n'
    )
    proc = cli(*run_args(sim, inp, out, "--on-bad-line", "skip"))
    assert proc.returncode == 1
    assert "line 2: malformed JSON" in proc.stderr and "line 4: duplicate id 'a'" in proc.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == ["a", "c"]
    assert sim.stats()["received"] == 2


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "300")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 40)
    first = start_cli(*run_args(sim, inp, out, "--concurrency", "2"))
    try:
        wait_for_lines(out, 1)
        second = cli(*run_args(sim, inp, out))
        assert second.returncode == 2
        assert "being written by another llmbatch run" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_keys_never_reach_output_logs_or_terminal(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    secret = "sk-live-SECRET0123456789"
    sim = start_sim()
    guarded = SimProcess("--api-key-env", "SIM_KEY", env={"SIM_KEY": "sk-the-right-one"})
    try:
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_simple(inp, 10)
        proc = cli(
            *run_args(
                guarded, inp, out, "--api-key-env", "MY_KEY", "--error-log", str(tmp_path / "logs")
            ),
            env={"MY_KEY": secret},
        )
        assert proc.returncode == 1
        records = read_out(out)
        assert all(r["error"]["code"] == "auth" for r in records)
        everything = out.read_text() + proc.stdout + proc.stderr
        everything += "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
        assert secret not in everything and "SECRET0123456789" not in everything
        missing = cli(*run_args(sim, inp, tmp_path / "o2.jsonl", "--api-key-env", "NOPE_KEY"))
        assert missing.returncode == 2 and "NOPE_KEY" in missing.stderr
    finally:
        guarded.close()


def test_a_torn_last_line_is_repaired_and_redone(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 20)
    assert cli(*run_args(sim, inp, out)).returncode == 0
    lines = out.read_bytes().splitlines(keepends=True)
    # A crash in the middle of writing the 18th line: 17 whole lines and half of one.
    out.write_bytes(b"".join(lines[:17]) + lines[17][: len(lines[17]) // 2])
    sim.reset()
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert "torn last line" in proc.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == sorted(ids)
    assert sim.stats()["received"] == 3


def test_stats_command(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--fail-rate", "0.3", "--seed", "5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 40)
    cli(*run_args(sim, inp, out, "--max-retries", "0"))
    table = cli("stats", str(out))
    assert "requests" in table.stdout and "p95" in table.stdout and "failed ids" in table.stdout
    js = json.loads(cli("stats", str(out), "--json").stdout)
    assert js["total_requests"] == 40
    assert js["failure_count"] == sum(1 for r in read_out(out) if r["error"])
    assert js["errors_by_type"] == {"server_error": js["failure_count"]}
    assert cli("stats", str(tmp_path / "nope.jsonl")).returncode == 2


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli("run", "-o", str(tmp_path / "o.jsonl")).returncode == 2
    proc = cli("run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = cli(
        "run", "--template", "{x}", "--files", "*.py", "-o", str(tmp_path / "o.jsonl"), cwd=tmp_path
    )
    assert proc.returncode == 2
    proc = cli("run", str(tmp_path / "x"), "-o", "o", "--concurrency", "0")
    assert proc.returncode == 2 and "--concurrency" in proc.stderr


def test_nan_and_inf_are_refused_by_number_flags(tmp_path: Path) -> None:
    # nan passed the "> 0" check: --timeout/--poll-interval nan crashed in the event loop's
    # timer with a traceback, --rpm nan ran unpaced.
    inp = tmp_path / "in.jsonl"
    write_simple(inp, 1)
    out = tmp_path / "o.jsonl"
    for flag in ("--timeout", "--poll-interval", "--rpm", "--request-timeout"):
        for value in ("nan", "inf", "-inf"):
            proc = cli(
                "run",
                str(inp),
                "-o",
                str(out),
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
                "--batch-api",
                f"{flag}={value}",
            )
            assert proc.returncode == 2, (flag, value, proc.stderr)
            assert f"argument {flag}: must be a positive number" in proc.stderr
            assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_whole_run_timeout_leaves_the_rest_for_a_rerun(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "100")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 100)
    proc = cli(*run_args(sim, inp, out, "--concurrency", "4", "--timeout", "0.6"))
    assert proc.returncode == 1, proc.stderr
    assert "unfinished" in proc.stderr
    done = read_out(out)
    assert 0 < len(done) < 100 and all(r["error"] is None for r in done)
    again = cli(*run_args(sim, inp, out, "--concurrency", "16"))
    assert again.returncode == 0, again.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == sorted(ids)


# -- the output file is the product: a failure to write it stops the run ----------------------


def assert_stopped_on_a_full_disk(
    proc: subprocess.CompletedProcess[str], out: Path, sim: SimProcess, oserror: str
) -> int:
    """Exit 3, one line naming the file and the OS error, no calls beyond those in flight."""
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"cannot write {out}: {oserror}" in proc.stderr
    assert "Traceback" not in proc.stderr
    whole = read_out_tolerant(out)
    assert 0 < len(whole) < 2000
    # --concurrency 8: at most 8 in flight and 16 pulled but not yet written when it failed.
    assert sim.stats()["received"] <= len(whole) + 1 + 3 * 8
    return len(whole)


def test_a_full_disk_stops_the_run_and_a_rerun_elsewhere_resumes(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    inp = tmp_path / "in.jsonl"
    ids = write_simple(inp, 2000)
    with tiny_fs(tmp_path) as disk:
        out = disk / "out.jsonl"
        proc = cli(*run_args(sim, inp, out, "--concurrency", "8"))
        done = assert_stopped_on_a_full_disk(proc, out, sim, "[Errno 28] No space left on device")
        moved = tmp_path / "out.jsonl"
        moved.write_bytes(out.read_bytes())  # possibly with a torn last line
    sim.reset()
    again = cli(*run_args(sim, inp, moved, "--concurrency", "8"))
    assert again.returncode == 0, again.stderr
    counts = Counter(r["custom_id"] for r in read_out(moved))
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    assert sim.stats()["received"] == 2000 - done


def test_a_file_size_limit_stops_the_run_and_a_rerun_resumes(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    """The same without root: RLIMIT_FSIZE makes the kernel refuse the write (EFBIG)."""
    import resource

    sim = start_sim("--latency-ms", "5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 2000)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = cli(*run_args(sim, inp, out, "--concurrency", "8"), preexec_fn=limit)
    done = assert_stopped_on_a_full_disk(proc, out, sim, "[Errno 27] File too large")
    sim.reset()
    again = cli(*run_args(sim, inp, out, "--concurrency", "8"))
    assert again.returncode == 0, again.stderr
    counts = Counter(r["custom_id"] for r in read_out(out))
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    assert sim.stats()["received"] == 2000 - done


# -- the output never destroys or swallows the input -------------------------------------------


def test_an_output_that_is_an_input_is_refused(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    rows = tmp_path / "rows.csv"
    rows.write_text("id,title\nk1,First\nk2,Second\n")
    before = rows.read_bytes()
    alias = tmp_path / "alias.csv"
    alias.symlink_to(rows)
    for output in (rows, alias):
        proc = cli(
            "run", "--template", "T: {title}", "--rows", str(rows), "-o", str(output),
            "--base-url", sim.url + "/v1", "--model", "sim", "--no-progress",
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"OUTPUT {output} is --rows" in proc.stderr
    inp = tmp_path / "in.jsonl"
    write_simple(inp, 3)
    proc = cli(*run_args(sim, inp, tmp_path / "." / "in.jsonl"))
    assert proc.returncode == 2 and "is INPUT" in proc.stderr
    assert rows.read_bytes() == before and sim.stats()["received"] == 0


def test_files_never_picks_up_the_output_or_its_lock(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
    args = [
        "run", "--template", "{path}: {content}", "--files", "*", "-o", "out.jsonl",
        "--base-url", sim.url + "/v1", "--model", "sim", "--no-progress",
    ]  # fmt: skip
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli(*args, cwd=tmp_path)  # now out.jsonl and out.jsonl.lock exist beforehand
    assert again.returncode == 0, again.stderr
    assert sorted(r["custom_id"] for r in read_out(tmp_path / "out.jsonl")) == ["a.txt", "b.txt"]
    assert sim.stats()["received"] == 2


def test_a_second_run_through_a_symlink_is_refused(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "300")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 40)
    (tmp_path / "alias.jsonl").symlink_to(out)
    first = start_cli(*run_args(sim, inp, out, "--concurrency", "2"))
    try:
        wait_for_lines(out, 1)
        second = cli(*run_args(sim, inp, tmp_path / "alias.jsonl"))
        assert second.returncode == 2, second.stderr
        assert "being written by another llmbatch run" in second.stderr
    finally:
        first.kill()
        first.wait()


# -- user data is printed as it is, never as markup --------------------------------------------

MARKUP_IDS = ["app/[slug]/page.tsx", "[/bold]", "[red]x[/red]"]


def test_ids_that_look_like_markup_print_verbatim(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--fail-rate", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": i, "prompt": "x"}) + "\n" for i in [*MARKUP_IDS, "[/bold]"])
    )
    bad = cli(*run_args(sim, inp, out))  # the duplicate is reported with its id
    assert bad.returncode == 2, bad.stderr
    assert "duplicate id '[/bold]'" in bad.stderr and "Traceback" not in bad.stderr
    proc = cli(*run_args(sim, inp, out, "--on-bad-line", "skip", "--max-retries", "0"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    table = cli("stats", str(out))
    assert table.returncode == 1, table.stderr
    for rid in MARKUP_IDS:
        assert rid in proc.stderr  # the end-of-run table's failed ids
        assert rid in table.stdout


# -- unusable paths: one line naming the path, exit 2, nothing sent ----------------------------


def test_unusable_paths_are_one_line_usage_errors(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp = tmp_path / "in.jsonl"
    write_simple(inp, 3)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "corrupt.db").write_bytes(b"this is not a database" * 100)
    out = str(tmp_path / "out.jsonl")
    cases = {
        "output is a directory": (
            run_args(sim, inp, tmp_path / "adir"),
            f"OUTPUT {tmp_path / 'adir'} is a directory",
        ),
        "output in a missing directory": (
            run_args(sim, inp, tmp_path / "nope" / "out.jsonl"),
            f"directory {tmp_path / 'nope'} does not exist",
        ),
        "--error-log is a file": (
            [*run_args(sim, inp, Path(out)), "--error-log", str(tmp_path / "afile")],
            f"--error-log {tmp_path / 'afile'} is a file",
        ),
        "--stats-json in a missing directory": (
            [*run_args(sim, inp, Path(out)), "--stats-json", str(tmp_path / "nope" / "s.json")],
            f"--stats-json {tmp_path / 'nope' / 's.json'}: directory",
        ),
        "--cache is a directory": (
            [*run_args(sim, inp, Path(out)), "--cache", str(tmp_path / "adir")],
            f"--cache {tmp_path / 'adir'}",
        ),
        "--cache is not a database": (
            [*run_args(sim, inp, Path(out)), "--cache", str(tmp_path / "corrupt.db")],
            f"--cache {tmp_path / 'corrupt.db'}",
        ),
    }
    for name, (args, message) in cases.items():
        proc = cli(*args)
        assert proc.returncode == 2, (name, proc.stderr)
        assert message in proc.stderr, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (name, proc.stderr)
    assert sim.stats()["received"] == 0


def test_an_output_on_a_read_only_filesystem_is_a_usage_error(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp = tmp_path / "in.jsonl"
    write_simple(inp, 3)
    with readonly_fs(tmp_path) as ro:
        proc = cli(*run_args(sim, inp, ro / "out.jsonl"))
    assert proc.returncode == 2, proc.stderr
    assert f"cannot open OUTPUT {ro / 'out.jsonl'}: [Errno 30] Read-only file system" in (
        proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sim.stats()["received"] == 0


def test_foreign_lines_in_a_resumed_output_are_kept_and_ignored(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 5)
    foreign = ['{"custom_id": 5}', '{"custom_id": "q1", "error": "x"}', '{"note": "[/bold]"}']
    out.write_text("\n".join(foreign) + "\n")
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert "line(s) 1, 2, 3 are not llmbatch result lines" in proc.stderr
    text = out.read_text().splitlines()
    assert text[:3] == foreign
    assert sorted(json.loads(x)["custom_id"] for x in text[3:]) == sorted(ids)
    stats = json.loads(cli("stats", str(out), "--json").stdout)
    assert stats["total_requests"] == 5 and stats["failure_count"] == 0


def test_stats_on_an_uncompacted_file_count_each_id_once(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 10)
    assert cli(*run_args(sim, inp, out)).returncode == 0
    # A run killed after redoing every id, before its close compacted: each id twice.
    out.write_bytes(out.read_bytes() * 2)
    js = json.loads(cli("stats", str(out), "--json").stdout)
    assert js["total_requests"] == 10 and js["success_count"] == 10


def test_retry_failed_compaction_keeps_a_symlink_and_the_mode(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    flaky = start_sim("--fail-rate", "0.5", "--seed", "3")
    inp = tmp_path / "in.jsonl"
    ids = write_simple(inp, 30)
    real = tmp_path / "private" / "out.jsonl"
    real.parent.mkdir()
    real.touch()
    os.chmod(real, 0o600)
    link = tmp_path / "out.jsonl"
    link.symlink_to(real)
    assert cli(*run_args(flaky, inp, link, "--max-retries", "0")).returncode == 1
    healthy = start_sim()
    proc = cli(*run_args(healthy, inp, link, "--retry-failed"))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert os.stat(real).st_mode & 0o777 == 0o600
    assert sorted(r["custom_id"] for r in read_out(real)) == sorted(ids)


def test_a_full_disk_in_compaction_keeps_the_output_and_exits_1(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    flaky = start_sim("--fail-rate", "0.1", "--seed", "2")
    inp = tmp_path / "in.jsonl"
    ids = write_simple(inp, 100)
    first = tmp_path / "first.jsonl"
    assert cli(*run_args(flaky, inp, first, "--max-retries", "0")).returncode == 1
    failed = {r["custom_id"] for r in read_out(first) if r["error"]}
    assert 0 < len(failed) < 20
    with tiny_fs(tmp_path, size="128k") as disk:
        out = disk / "out.jsonl"
        out.write_bytes(first.read_bytes())
        filler = disk / "filler"
        fill(filler)
        # Room for the redone lines, not for a second copy of the whole file.
        os.truncate(filler, filler.stat().st_size - 16 * 1024)
        healthy = start_sim()
        proc = cli(*run_args(healthy, inp, out, "--retry-failed"))
        assert proc.returncode == 1, proc.stderr
        assert f"cannot rewrite (compact) {out}: [Errno 28] No space left on device" in (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr
        assert not (disk / "out.jsonl.compact.tmp").exists()
        records = read_out(out)
    # Intact: every old line, then one fresh line per redone id; a rerun would compact it.
    assert len(records) == 100 + len(failed)
    newest = {r["custom_id"]: r for r in records}
    assert set(newest) == set(ids) and all(r["error"] is None for r in newest.values())


def test_concurrency_auto_is_the_default_and_a_number_still_fixes_it(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--limit-style", "queue", "--slots", "2", "--latency-ms", "50")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 60)
    proc = cli(*run_args(sim, inp, out))  # no --concurrency: auto
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["custom_id"] for r in read_out(out)) == sorted(ids)
    assert sim.stats()["max_queue_depth"] <= 10
    # A number is kept as given: 32 in flight at once queue 30 at the 2 slots.
    fixed = cli(*run_args(sim, inp, tmp_path / "o3.jsonl", "--concurrency", "32"))
    assert fixed.returncode == 0, fixed.stderr
    assert sim.stats()["max_queue_depth"] >= 25
    bad = cli(*run_args(sim, inp, tmp_path / "o2.jsonl", "--concurrency", "lots"))
    assert bad.returncode == 2 and '"auto"' in bad.stderr


def test_a_server_outage_is_waited_out_and_reported(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "30", "--outage-at", "0.5", "--outage-for", "2")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 150)
    proc = cli(*run_args(sim, inp, out, "--concurrency", "8", "--max-retries", "2"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = read_out(out)
    assert sorted(r["custom_id"] for r in lines) == sorted(ids)
    assert all(r["error"] is None for r in lines)  # 2 retries each would not have survived it
    assert "server outage" in proc.stdout + proc.stderr and "came back" in proc.stdout + proc.stderr


def test_past_max_outage_the_rest_fail_and_a_rerun_redoes_them(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "20", "--outage-at", "0.3", "--outage-for", "600")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 300)
    proc = cli(*run_args(sim, inp, out, "--concurrency", "8", "--max-outage", "1.5"))
    assert proc.returncode == 1, proc.stderr
    lines = read_out(out)
    assert len(lines) == 300  # every request has its line: done, or failed by the outage
    failed = [r for r in lines if r["error"] is not None]
    assert failed and all(r["error"]["code"] == "connection" for r in failed)
    assert "did not come back" in proc.stdout + proc.stderr


def test_split_token_limits_from_flags(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--limit-style", "anthropic", "--itpm", "60000", "--otpm", "6000")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 20)  # 16 output tokens each: 320 of the 6000/min output budget
    args = run_args(sim, inp, out, "--itpm", "60000", "--otpm", "6000")
    args[args.index("--base-url") + 1] = sim.url
    proc = cli(*args, "--provider", "anthropic", env={"ANTHROPIC_API_KEY": "sk-ant-test"})
    assert proc.returncode == 0, proc.stderr
    assert len(read_out(out)) == 20 and sim.stats()["over_limit"] == 0


def test_a_request_over_a_split_budget_is_a_bad_line(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_simple(inp, 3)  # max_tokens 16 each
    proc = cli(*run_args(sim, inp, out, "--otpm", "10"))
    assert proc.returncode == 2
    assert "line 1" in proc.stdout + proc.stderr and "--otpm 10" in proc.stdout + proc.stderr
    assert sim.stats()["received"] == 0
