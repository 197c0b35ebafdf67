"""The live page: `llmbatch watch OUTPUT`, `run --watch`, `RunConfig(watch=...)`.

Real processes and a real browser: a run writes its output in one process while the page,
served by another, follows it; Chromium (tests/browser.py) checks the drawn plots and that
the numbers move while the run appends lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch import BatchResult, CompletionResponse, RunConfig, ServerError, Usage
from llmbatch.io.journal import Journal
from llmbatch.pipeline import ResultWritten, RunNotice
from llmbatch.report import aggregate

from .browser import Browser
from .helpers import cli, start_cli, wait_for, write_requests

pytest.importorskip("plotly")


def start_watch(output: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`llmbatch watch OUTPUT` in its own process, and its page's URL."""
    proc = start_cli("watch", str(output), *extra)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    assert found, line + proc.stderr.read() if proc.poll() is not None else line
    return proc, found.group(1)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    return proc.wait(timeout=30)


def get(
    url: str, host: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def data(url: str) -> dict[str, Any]:
    status, _, body = get(url + "data.json")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def results(out: Path, ids: list[str], failed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    with Journal(out) as journal:
        for i, rid in enumerate(ids):
            if rid in failed:
                journal.write(BatchResult(rid, error=ServerError("down <b>bold</b>"), attempts=2))
            else:
                response = CompletionResponse("ok", usage=Usage(10, 5))
                journal.write(BatchResult(rid, response=response, duration=0.1 + i / 100))


def test_the_page_shows_what_the_report_shows(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ids = [f"r{i}" for i in range(30)]
    results(out, ids, failed={"r3", "r7"})
    proc, url = start_watch(out, "--total", "40")
    try:
        page = data(url)
    finally:
        assert stop(proc) == 0
    report = aggregate(out)
    progress = page["progress"]
    assert progress["done"] == 30 and progress["total"] == 40 and progress["percent"] == 75.0
    assert (progress["succeeded"], progress["failed"]) == (28, 2)
    assert page["errors"] == [["server_error", "2"]]
    assert ["requests", "30"] in page["summary"]
    assert {row[0] for row in page["failed"]} == {"r3", "r7"}
    assert report["summary"]["requests"] == 30
    # The report's six plots, as plotly figures.
    assert len(page["figures"]) == 6
    assert page["figures"][0]["figure"]["layout"]["title"]["text"].startswith("Throughput")


def test_the_page_is_read_only_local_and_locked_down(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    results(out, ["a"])
    proc, url = start_watch(out)
    try:
        status, headers, body = get(url)
        assert status == 200 and b'<script src="plotly.js">' in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        status, _, body = get(url + "plotly.js")
        assert status == 200 and len(body) > 1_000_000  # served here: no CDN
        assert get(url + "data.json", method="POST")[0] == 405
        assert get(url + "data.json", method="DELETE")[0] == 405
        assert get(url + "../out.jsonl")[0] == 404
        assert get(url + "out.jsonl")[0] == 404  # the output itself is never served
        # Another host name (DNS rebinding from a web page elsewhere) is refused.
        assert get(url + "data.json", host="attacker.example:80")[0] == 403
    finally:
        stop(proc)
    assert out.read_bytes().count(b"\n") == 1  # nothing written


def test_the_page_shows_a_batch_runs_batches(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(25)])
    run = cli(
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model",
        "gpt-4o-mini", "--batch-api", "--poll-interval", "0.1", "--batch-max-requests", "10",
        "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    proc, url = start_watch(out)
    try:
        page = data(url)
    finally:
        stop(proc)
    batches = page["batches"]
    assert [row[0] for row in batches["rows"]] == ["0", "1", "2"]
    assert [row[3] for row in batches["rows"]] == ["10", "10", "5"]
    assert {row[1] for row in batches["rows"]} == {"ended"}
    assert batches["states"] == {"completed": 3}
    # Without --total, the ledger's chunks give the total.
    assert page["progress"]["total"] == 25 and page["progress"]["percent"] == 100.0


def test_watch_refuses_a_taken_port_and_waits_for_a_missing_output(tmp_path: Path) -> None:
    out = tmp_path / "later.jsonl"
    proc, url = start_watch(out)
    try:
        page = data(url)
        assert page["exists"] is False and page["progress"]["done"] == 0
        port = url.rsplit(":", 1)[1].rstrip("/")
        taken = cli("watch", str(out), "--port", port)
        assert taken.returncode == 2 and f"--port {port}: cannot listen" in taken.stderr
        results(out, ["a", "b"])
        wait_for(lambda: data(url)["progress"]["done"] == 2, "the page to see the new output")
    finally:
        stop(proc)


def test_run_watch_from_python_serves_the_run_while_it_goes(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "20", "--rpm", "1200")
    out = tmp_path / "out.jsonl"
    inp = tmp_path / "in.jsonl"
    write_requests(inp, [f"q{i}" for i in range(60)])
    seen: list[dict[str, Any]] = []

    def listen(event: object) -> None:
        if isinstance(event, RunNotice) and "live page at" in event.message:
            seen.append({"url": event.message.split(" at ", 1)[1]})
        if isinstance(event, ResultWritten) and seen and len(seen) < 3:
            # Mid-run, from the run's own listener thread: the page answers (its own thread).
            seen.append(data(seen[0]["url"]))

    config = RunConfig(
        input=str(inp),
        output=str(out),
        base_url=sim.url + "/v1",
        model="sim",
        watch=0,
        rpm=1200,
        listeners=[listen],
    )
    summary = llmbatch.run(config)
    assert summary.exit_code == 0
    assert seen and seen[0]["url"].startswith("http://127.0.0.1:")
    assert seen[1]["progress"]["total"] == 60
    assert seen[1]["progress"]["done"] < 60  # it was read while the run went on
    # The page closed with the run.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(seen[0]["url"], timeout=10)


def test_run_watch_flag_prints_the_page(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, ["a", "b"])
    proc = cli(
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "sim",
        "--no-progress", "--watch", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"live page at http://127\.0\.0\.1:\d+/", proc.stderr), proc.stderr
    bad = cli("run", str(inp), "-o", str(out), "--watch", "70000")
    assert bad.returncode == 2 and "--watch" in bad.stderr


async def test_the_page_follows_a_run_in_a_browser(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    # 200 requests at 400/min: the run lasts about 30 s, the page refreshes every 2 s.
    sim = start_sim("--latency-ms", "50")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(200)])
    watcher, url = start_watch(out, "--total", "200")
    run: subprocess.Popen[str] | None = None
    done = "Number(document.getElementById('progress').rows[0].cells[1].textContent.split(' ')[0])"
    try:
        async with Browser.start() as browser:
            # The page is up before the run starts: it waits for the output to appear.
            await browser.open(url)
            status = await browser.wait_until(
                "document.getElementById('status').textContent.includes('waiting for')"
                " && document.getElementById('status').textContent",
                "the page to wait for the output",
            )
            assert str(out) in status
            run = start_cli(
                "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model",
                "sim", "--no-progress", "--rpm", "400",
            )  # fmt: skip
            drawn = await browser.wait_until(
                "document.querySelectorAll('.js-plotly-plot .main-svg').length >= 6"
                " && document.querySelectorAll('.js-plotly-plot').length",
                "the plots to be drawn",
            )
            assert drawn == 6
            first = await browser.wait_until(f"{done} > 0 && {done}", "a first result")
            later = await browser.wait_until(
                f"{done} > {first} && {done}", "the page to move", timeout=120
            )
            assert 0 < first < later <= 200
            await browser.wait_until(f"{done} === 200", "the run's end", timeout=120)
            bars = await browser.evaluate(
                "document.querySelectorAll('.js-plotly-plot')[0]"
                ".querySelectorAll('.trace.bars .point path').length"
            )
            assert bars > 0
            assert "200 of 200" in await browser.evaluate(
                "document.getElementById('progress').rows[0].cells[1].textContent"
            )
            image = await browser.screenshot(tmp_path / "live.png")
        assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 100_000
        assert run.wait(timeout=120) == 0
    finally:
        if run is not None:
            run.kill()
        stop(watcher)


async def test_text_from_the_output_is_shown_never_run(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    evil = '<img src=x onerror="document.body.dataset.owned=1">'
    with Journal(out) as journal:
        journal.write(BatchResult(evil, error=ServerError(evil), attempts=1))
        journal.write(BatchResult("fine", response=CompletionResponse("ok"), duration=0.1))
    proc, url = start_watch(out)
    try:
        async with Browser.start() as browser:
            await browser.open(url)
            await browser.wait_until(
                "document.getElementById('failed').rows.length > 1", "the failed table"
            )
            cells = await browser.evaluate(
                "[...document.getElementById('failed').rows[1].cells].map(c => c.textContent)"
            )
            assert cells[0] == evil  # shown as text
            assert await browser.evaluate("document.querySelectorAll('#failed img').length") == 0
            assert await browser.evaluate("document.body.dataset.owned === undefined")
    finally:
        stop(proc)
