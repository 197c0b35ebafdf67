"""The HTML run report: aggregates read back from the embedded JSON, edge cases, a browser."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llmbatch import BatchResult, CompletionResponse, RateLimitError, ServerError, Usage
from llmbatch.errors import RequestTimeoutError
from llmbatch.io.journal import Journal
from llmbatch.types import Timing

pytest.importorskip("plotly")

from llmbatch.report import aggregate
from llmbatch.report.aggregate import MAX_BUCKETS

from .browser import Browser, require_chromium
from .helpers import cli

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # a whole minute: buckets line up with it


def embedded(html: str) -> dict[str, Any]:
    found = re.search(
        r'<script type="application/json" id="llmbatch-data">(.*?)</script>', html, re.S
    )
    assert found, "the report embeds its data"
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def report_of(out: Path, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    page = tmp_path / "report.html"
    proc = cli("report", str(out), "-o", str(page), *extra)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    return embedded(html), html


def ok(rid: str, duration: float, start: float, **kw: Any) -> BatchResult:
    attempts = kw.pop("log", ((0.0, duration, 200),))
    wait = sum(a[0] for a in attempts)
    provider = sum(a[1] for a in attempts)
    return BatchResult(
        rid,
        response=CompletionResponse("x", usage=Usage(10, 4)),
        duration=duration,
        attempts=len(attempts),
        cost=kw.pop("cost", None),
        timing=Timing(start, start + duration, wait, provider, kw.pop("backoff", 0.0), attempts),
    )


def write(path: Path, results: list[BatchResult]) -> None:
    with Journal(path) as journal:
        for r in results:
            journal.write(r)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def test_the_report_holds_the_right_aggregates(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    results: list[BatchResult] = []
    durations = []
    for i in range(200):  # 200 successes over 100 s, durations 0.01 .. 2.00 s
        d = (i + 1) / 100
        durations.append(d)
        results.append(ok(f"ok{i}", d, T0 + i / 2, cost=0.001))
    # Two requests refused with 429 twice each at T0+30 s, then served.
    for k in range(2):
        log = ((0.0, 0.1, 429), (0.0, 0.1, 429), (0.3, 0.1, 200))
        results.append(ok(f"storm{k}", 0.6, T0 + 30, log=log, backoff=0.0))
        durations.append(0.6)
    # Three failures, and the slowest request of all.
    for k, err in enumerate([ServerError("boom"), RateLimitError(), RequestTimeoutError("t")]):
        log = ((0.0, 1.0, getattr(err, "status_code", None) or "timeout"),)
        results.append(
            BatchResult(
                f"bad{k}",
                error=err,
                duration=1.0,
                attempts=1,
                timing=Timing(T0 + 50, T0 + 51, 0.0, 1.0, 0.0, log),
            )
        )
        durations.append(1.0)
    results.append(ok("slowest", 30.0, T0 + 60, log=((20.0, 10.0, 200),)))
    durations.append(30.0)
    write(out, results)

    data, html = report_of(out, tmp_path, "--rpm", "600")
    s = data["summary"]
    assert (s["requests"], s["succeeded"], s["failed"]) == (206, 203, 3)
    assert s["attempts"] == 210 and s["retries"] == 4
    assert (s["tokens_in"], s["tokens_out"]) == (2030, 812)
    assert s["cost_usd"] == pytest.approx(0.2)
    assert s["started_at"] == T0 and s["finished_at"] == T0 + 99.5 + 2.0
    assert s["wall_seconds"] == pytest.approx(101.5)
    assert s["effective_rpm"] == pytest.approx(206 / 101.5 * 60)
    assert s["limit_rpm"] == 600
    assert s["wait_seconds"] == pytest.approx(20.6) and s["provider_seconds"] > 0
    for q in (50, 95, 99):
        exact = nearest_rank(durations, q)
        assert data["latency"][f"p{q}"] == pytest.approx(exact, rel=0.025), q
    assert data["latency"]["count"] == 206 and data["latency"]["max"] == 30.0
    assert sum(data["throughput"]["ok"]) == 203 and sum(data["throughput"]["failed"]) == 3
    assert sum(data["throughput"]["attempts"]) == 210
    # Each refused attempt sits in the second it ended in: the storm's four at T0+30 s,
    # bad1's at T0+51 s (one-second buckets: the run spans well under MAX_BUCKETS seconds).
    assert data["bucket_seconds"] == 1
    t, errors = data["throughput"]["t"], data["errors_over_time"]["attempts"]
    at = {code: {t[i]: n for i, n in enumerate(counts) if n} for code, counts in errors.items()}
    assert at == {"429": {T0 + 30: 4, T0 + 51: 1}, "500": {T0 + 51: 1}, "timeout": {T0 + 51: 1}}
    assert data["errors_by_code"] == {"server_error": 1, "rate_limit": 1, "timeout": 1}
    assert data["attempt_outcomes"]["429"] == 5  # the storm's four and bad1's one
    assert data["attempts_per_request"] == {"1": 204, "3": 2}
    assert [r["id"] for r in data["slowest"][:3]] == ["slowest", "ok199", "ok198"]
    assert data["slowest"][0]["wait"] == 20.0
    assert [r["id"] for r in data["failed_requests"]] == ["bad0", "bad1", "bad2"]
    # One file, nothing fetched: plotly.js is inside, no script or style comes from a URL.
    assert "Plotly" in html and len(html) > 1_000_000
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=", html)


def test_the_newest_line_of_an_id_counts(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = [BatchResult("a", error=ServerError("x"), duration=1, attempts=1)]
    first += [ok(f"k{i}", 0.1, T0 + i) for i in range(5)]
    write(out, first)
    # A run redoing "a" killed before compaction leaves both lines; the newest wins.
    with open(out, "ab") as f:
        from llmbatch.io.journal import result_line

        f.write(result_line(ok("a", 0.2, T0 + 10)))
    data = aggregate(out)
    assert data["summary"]["requests"] == 6
    assert data["summary"]["failed"] == 0 and data["failed_requests"] == []


def test_a_report_of_an_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("")
    data, html = report_of(out, tmp_path)
    assert data["summary"]["requests"] == 0
    assert data["summary"]["effective_rpm"] is None and data["throughput"]["t"] == []
    assert data["latency"]["count"] == 0 and data["slowest"] == []
    assert "no timed results" in html


def test_a_report_of_an_all_failed_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    results = [
        BatchResult(
            f"f{i}",
            error=RateLimitError() if i % 2 else ServerError("down"),
            duration=0.5,
            attempts=2,
            timing=Timing(T0 + i, T0 + i + 0.5, 0.1, 0.3, 0.1, ((0.1, 0.1, 500), (0.0, 0.2, 500))),
        )
        for i in range(20)
    ]
    results[0].id = "</script><b>f0"  # ids are user data: neither markup nor an early end
    write(out, results)
    data, html = report_of(out, tmp_path)
    assert data["failed_requests"][0]["id"] == "</script><b>f0"
    assert "&lt;/script&gt;&lt;b&gt;f0" in html and "<b>f0" not in html
    s = data["summary"]
    assert (s["requests"], s["succeeded"], s["failed"]) == (20, 0, 20)
    assert s["tokens_in"] == 0 and s["cost_usd"] is None
    assert data["errors_by_code"] == {"rate_limit": 10, "server_error": 10}
    assert len(data["failed_requests"]) == 20 and sum(data["throughput"]["failed"]) == 20
    assert sum(data["throughput"]["ok"]) == 0


def test_lines_without_timing_still_count(tmp_path: Path) -> None:
    # Output of an older version, cache hits written by the sink, results made elsewhere.
    out = tmp_path / "out.jsonl"
    write(
        out,
        [
            BatchResult(f"u{i}", response=CompletionResponse("x"), duration=0.2, attempts=1)
            for i in range(4)
        ],
    )
    data = aggregate(out)
    assert data["summary"]["requests"] == 4 and data["summary"]["untimed"] == 4
    assert data["latency"]["count"] == 4 and data["throughput"]["t"] == []


def test_damaged_timestamps_do_not_stop_the_report(tmp_path: Path) -> None:
    # A hand-edited or damaged line (a time out of range, an end before its start) crashed
    # the page with a traceback (datetime out of range); it counts, untimed.
    out = tmp_path / "out.jsonl"
    write(out, [ok("a", 0.5, T0)])
    with out.open("a") as f:
        for start, end in ((1e300, -1e300), (T0 + 5, T0), (-5.0, T0), (T0, 1e20)):
            meta = {"duration": 0.1, "attempts": 1, "started_at": start, "finished_at": end}
            line = {"custom_id": f"bad{start}{end}", "response": None, "error": None}
            f.write(json.dumps({**line, "llmbatch": meta}) + "\n")
    proc = cli("report", str(out), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    data = embedded((tmp_path / "r.html").read_text())
    assert data["summary"]["requests"] == 5 and data["summary"]["untimed"] == 4


def test_time_buckets_stay_bounded_over_a_long_run(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    # One request a minute for 30 hours: 1800 minutes, far more than MAX_BUCKETS seconds.
    write(out, [ok(f"r{i}", 0.5, T0 + 60 * i) for i in range(1800)])
    data = aggregate(out)
    n = len(data["throughput"]["t"])
    assert 0 < n <= MAX_BUCKETS
    width = data["bucket_seconds"]
    assert width >= 1800 * 60 / MAX_BUCKETS and math.log2(width).is_integer()
    assert sum(data["throughput"]["ok"]) == 1800


def test_run_writes_a_report_at_the_end(tmp_path: Path, start_sim: Any) -> None:
    sim = start_sim("--fail-rate", "0.3", "--seed", "2")
    inp, out, page = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "r.html"
    inp.write_text("".join(f'{{"id": "q{i}", "prompt": "question {i}"}}\n' for i in range(30)))
    proc = cli(
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "sim",
        "--no-progress", "--max-retries", "0", "--rpm", "6000", "--report", str(page),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # some failed, by design
    assert f"report: {page}" in proc.stderr
    assert "admission wait p95" in proc.stderr and "provider time p99" in proc.stderr
    data = embedded(page.read_text())
    failed = sum(1 for line in out.read_text().splitlines() if '"error":{' in line)
    assert data["summary"]["requests"] == 30 and data["summary"]["failed"] == failed > 0
    assert data["summary"]["limit_rpm"] == 6000


def test_report_refuses_to_overwrite_its_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write(out, [ok("a", 0.5, T0)])
    before = out.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    for target in (out, tmp_path / "." / "out.jsonl", link):
        proc = cli("report", str(out), "-o", str(target))
        assert proc.returncode == 2 and "is OUTPUT" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert out.read_bytes() == before
    ledger = tmp_path / "out.jsonl.batches.json"
    ledger.write_text("{}")
    for target, what in (
        (ledger, "the batch ledger"),
        (tmp_path / "out.jsonl.lock", "OUTPUT's lock file"),
        (tmp_path / "out.jsonl.idx", "OUTPUT's index"),
    ):
        proc = cli("report", str(out), "-o", str(target))
        assert proc.returncode == 2 and f"is {what}" in proc.stderr, proc.stderr
    assert ledger.read_text() == "{}"


def test_report_refuses_a_missing_output(tmp_path: Path) -> None:
    proc = cli("report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


async def test_the_report_renders_its_plots_in_a_real_browser(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    results = [ok(f"r{i}", 0.05 * (1 + i % 40), T0 + i / 4) for i in range(400)]
    results += [
        BatchResult(f"f{i}", error=ServerError("boom"), duration=0.1, attempts=3) for i in range(5)
    ]
    write(out, results)
    data, _ = report_of(out, tmp_path)
    async with Browser.start() as browser:
        await browser.open((tmp_path / "report.html").as_uri())
        # plotly draws each figure into an <svg class="main-svg"> once its script ran.
        drawn = await browser.wait_until(
            "(() => { const plots = [...document.querySelectorAll('.js-plotly-plot')];"
            " return plots.length && plots.every(p => p.querySelector('.main-svg'))"
            " ? plots.length : 0 })()",
            "every plot to be drawn",
        )
        assert drawn == 6
        titles = await browser.evaluate(
            "[...document.querySelectorAll('.gtitle')].map(t => t.textContent)"
        )
        assert any(t.startswith("Throughput") for t in titles), titles
        assert any(t.startswith("Latency per request") for t in titles), titles
        # The throughput bars hold the data: as many bars drawn as buckets with requests.
        bars = await browser.evaluate(
            "document.querySelectorAll('.js-plotly-plot')[0]"
            ".querySelectorAll('.trace.bars .point path').length"
        )
        buckets = sum(1 for v in data["throughput"]["ok"] if v) + sum(
            1 for v in data["throughput"]["failed"] if v
        )
        assert bars >= buckets > 0
        # The tables are there, escaped text and all.
        failed = await browser.evaluate(
            "[...document.querySelectorAll('table')].some(t => t.textContent.includes('f4'))"
        )
        assert failed
        image = await browser.screenshot(tmp_path / "report.png")
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    # A page of drawn plots compresses far worse than a blank one (a few KB).
    assert len(image) > 100_000


def test_render_report_script_takes_a_screenshot(tmp_path: Path) -> None:
    require_chromium()
    out = tmp_path / "out.jsonl"
    write(out, [ok(f"r{i}", 0.05 * (1 + i % 40), T0 + i / 4) for i in range(100)])
    report_of(out, tmp_path)
    png = tmp_path / "report.png"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "render_report.sh"), str(tmp_path / "report.html"), str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    image = png.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 100_000


def test_run_refuses_a_report_it_could_not_write_before_sending(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": "q0", "prompt": "hello"}\n')
    base = ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    for report, why in (
        (tmp_path / "no" / "r.html", "does not exist"),
        (out, "is OUTPUT"),
        # Written at the end, also of an interrupted run: over the batch ledger it would
        # forget the batches still running, and the rerun would pay for them again.
        (tmp_path / "out.jsonl.batches.json", "is the batch ledger"),
        (tmp_path / "out.jsonl.lock", "is the output's lock file"),
        (tmp_path / "s.json", "is the --stats-json file"),
    ):
        proc = cli(*base, "--stats-json", str(tmp_path / "s.json"), "--report", str(report))
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert not out.exists()


def test_the_report_shows_the_prompt_cache_share_and_savings(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    usage = Usage(1000, 4, cached_tokens=900)
    write(
        out,
        [
            BatchResult(
                f"r{i}",
                response=CompletionResponse("x", usage=usage if i else Usage(1000, 4)),
                cost=0.001,
                cache_saved=0.0005 if i else None,
            )
            for i in range(4)
        ],
    )
    data, html = report_of(out, tmp_path)
    summary = data["summary"]
    assert summary["cached_prompt_tokens"] == 2700
    assert summary["cache_hit_share"] == pytest.approx(2700 / 4000)
    assert summary["cache_saved_usd"] == pytest.approx(0.0015)
    assert "67.5% of input tokens read from it, saved $0.001500" in html
