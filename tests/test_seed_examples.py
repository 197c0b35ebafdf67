"""The seed's examples 1 and 3, run as written (example 2 lives in test_limiter.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from llmbatch import (
    BadRequestError,
    BatchProcessor,
    BatchProcessorConfig,
    BatchProcessorWithProgress,
    BatchRequest,
    CompletionRequest,
    ErrorHandler,
    ProgressLogger,
    PromptSection,
    RetryPolicy,
    ServerError,
    calculate_batch_stats,
)
from llmbatch.clients import FakeClient


def test_example1_file_summaries_with_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = []
    for i in range(12):
        f = tmp_path / f"mod{i}.py"
        f.write_text(f"def f{i}():\n    return {i}\n")
        files.append(str(f))
    broken = files[3]
    client = FakeClient(
        latency=0.005,
        failures={f"Summarize this file: {broken}": [BadRequestError("context too long")]},
    )
    logger = ProgressLogger(2.0, True, True)
    processor = BatchProcessorWithProgress(
        client,
        BatchProcessorConfig(max_concurrency=10, prompt_section=PromptSection.FILE_SUMMARY),
        logger,
        True,
    )
    requests = [
        BatchRequest(
            f,
            CompletionRequest(
                prompt=f"Summarize this file: {f}",
                temperature=0.3,
                max_tokens=400,
                response_format="json",
            ),
        )
        for f in files
    ]
    with caplog.at_level(logging.INFO, logger="llmbatch.progress"):
        results, stats = processor.process_batch(requests)

    assert [r.id for r in results] == files
    for result in results:
        if result.error is None:
            assert orjson.loads(result.response.content)["summary"]  # type: ignore[union-attr]
    assert stats.total_requests == 12 and stats.success_count == 11
    assert stats.failed_requests == (broken,)
    # The final log names the failed file; progress lines were throttled, not one per request.
    assert any(broken in rec.getMessage() for rec in caplog.records)
    progress_lines = [r for r in caplog.records if r.getMessage().startswith("Progress:")]
    assert 1 <= len(progress_lines) < 12


def test_example3_domain_classification_with_error_handler_and_fallback(tmp_path: Path) -> None:
    nodes = [f"pkg/module_{i}" for i in range(20)]
    failing = {nodes[2], nodes[11]}
    client = FakeClient(
        lambda req: (
            BadRequestError("unsupported input")
            if any(req.prompt.endswith(n) for n in failing)
            else '{"domain": "core"}'
        )
    )
    handler = ErrorHandler(tmp_path / "logs")
    processor = BatchProcessor(
        client,
        BatchProcessorConfig(
            max_concurrency=10,
            error_handler=handler,
            prompt_section=PromptSection.DOMAIN_CLASSIFICATION,
        ),
    )
    requests = [
        BatchRequest(
            n,
            CompletionRequest(
                prompt=f"Classify the domain of {n}",
                temperature=0.0,
                max_tokens=150,
                response_format="json",
            ),
        )
        for n in nodes
    ]
    results = processor.process_batch(requests)
    domains = {}
    for result in results:
        if result.error is not None:
            domains[result.id] = "fallback:rules"  # the seed's rule-based fallback
            continue
        domains[result.id] = orjson.loads(result.response.content)["domain"]  # type: ignore[union-attr]
    assert {k for k, v in domains.items() if v.startswith("fallback")} == failing

    # The errors are already in the error log, with the section.
    [log_file] = list((tmp_path / "logs").glob("llm_errors_*.jsonl"))
    lines = [orjson.loads(line) for line in log_file.read_bytes().splitlines()]
    assert {line["request_id"] for line in lines} == failing
    assert all(line["prompt_section"] == "domain_classification" for line in lines)
    assert all(line["error_type"] == "bad_request" for line in lines)
    assert stats_ok(results)


def stats_ok(results: list) -> bool:  # type: ignore[type-arg]
    stats = calculate_batch_stats(results)
    return stats.total_requests == 20 and stats.failure_count == 2


def test_seed_partial_failure_retry_pattern() -> None:
    """The seed's 'retry the failed ones' recipe: a second process_batch on the failures."""
    client = FakeClient(failures={"p1": [ServerError("x")] * 10})
    processor = BatchProcessor(client, BatchProcessorConfig(retry=RetryPolicy(base_delay=0)))
    requests = {f"r{i}": BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(4)}
    results = processor.process_batch(list(requests.values()))
    failed = [requests[r.id] for r in results if r.error is not None]
    assert [f.id for f in failed] == ["r1"]
    retry = processor.process_batch(failed)
    assert retry[0].ok
