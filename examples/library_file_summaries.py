"""The seed's first example through the library API, against a simulated provider.

    python examples/library_file_summaries.py

Starts `llmbatch simulate` (150 ms latency, 600 req/min, 5% server errors, 2% resets) in its
own process, then runs the seed's first example (file summaries, JSON mode) with
`BatchProcessorWithProgress` over HTTP: a progress bar, retries, pacing learned from the
server's headers, and a stats table at the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llmbatch import (
    BatchProcessorConfig,
    BatchProcessorWithProgress,
    BatchRequest,
    CompletionRequest,
    ErrorHandler,
    ProgressLogger,
    PromptSection,
)
from llmbatch.clients import OpenAIClient

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    console = Console(stderr=True)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmbatch",
            "simulate",
            "--port",
            "0",
            "--latency-ms",
            "150",
            "--latency-jitter-ms",
            "50",
            "--rpm",
            "600",
            "--fail-rate",
            "0.05",
            "--reset-rate",
            "0.02",
            "--seed",
            "42",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().split()[-1]
        console.print(f"[bold]simulator[/] at {url} (600 req/min, 5% errors, 2% resets)")
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py"))
        # Repeat the files a few times so the run lasts long enough to watch.
        requests = [
            BatchRequest(
                f"{path}#{k}",
                CompletionRequest(
                    prompt=f"Summarize this file: {path}\n\n{(ROOT / path).read_text()[:4000]}",
                    temperature=0.3,
                    max_tokens=400,
                    response_format="json",
                ),
            )
            for k in range(4)
            for path in files
        ]
        client = OpenAIClient(base_url=url + "/v1", api_key="sk-demo", model="sim-1")
        processor = BatchProcessorWithProgress(
            client,
            BatchProcessorConfig(
                max_concurrency=16,
                prompt_section=PromptSection.FILE_SUMMARY,
                error_handler=ErrorHandler(ROOT / "logs"),
            ),
            ProgressLogger(5.0, enable_console=False, enable_detailed=True),
            show_progress_bar=True,
        )
        results, stats = processor.process_batch(requests, timeout=300)
        first = next(r for r in results if r.ok)
        console.print(f"[dim]{first.id}:[/] {first.response.content[:100]}...")  # type: ignore[union-attr]
        table = Table(title="llmbatch demo: file summaries")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in stats.to_dict().items():
            if key != "failed_requests":
                table.add_row(key, str(value))
        Console().print(table)
        return 0 if stats.failure_count == 0 else 1
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
