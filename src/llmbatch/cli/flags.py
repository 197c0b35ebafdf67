"""The flags of `llmbatch run` (and `llmbatch plan`, which takes the same), and the one
mapping between them and `RunConfig`: a flag's destination is its field's name.

    add_run_arguments(parser)
    config = config_from(parser.parse_args(argv))     # ConfigError names a field ...
    flag_name("max_cost")                             # ... shown as its flag: "--max-cost"
"""

from __future__ import annotations

import argparse
import dataclasses

from ..batch_api.runner import DEFAULT_POLL_INTERVAL
from ..breaker import DEFAULT_MAX_OUTAGE
from ..clients import PROVIDERS
from ..engine import DEFAULT_CONCURRENCY
from ..pipeline import RunConfig
from ..replies import DEFAULT_MAX_INVALID_RETRIES
from ..schema import SCHEMA_MODES
from ..tiers import SERVICE_TIERS
from ._common import (
    concurrency,
    finish_by,
    non_negative_float,
    positive_float,
    positive_int,
)

__all__ = ["add_run_arguments", "config_from", "flag_name"]

_POSITIONAL = {"input": "INPUT", "output": "OUTPUT"}
_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def flag_name(field: str) -> str:
    """How the CLI names a `RunConfig` field: its flag (`--max-cost`), or INPUT/OUTPUT."""
    if field in _POSITIONAL:
        return _POSITIONAL[field]
    return "--" + field.replace("_", "-")


def config_from(args: argparse.Namespace, **python_only: object) -> RunConfig:
    """The `RunConfig` the parsed flags describe (`ConfigError` for a value the parser let
    through but the config refuses)."""
    values = {name: value for name, value in vars(args).items() if name in _FIELDS}
    return RunConfig(**values, **python_only)  # type: ignore[arg-type]


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of `run` (`llmbatch plan` takes the same)."""
    p.add_argument("input", metavar="INPUT", nargs="?", help="JSONL file of requests")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="results file")
    g = p.add_argument_group("provider")
    g.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="openai",
        help="API flavour (default openai: OpenAI and every OpenAI-compatible server; "
        "anthropic; gemini: Google's Gemini API)",
    )
    g.add_argument("--base-url", help="API base URL (default: the provider's, or *_BASE_URL)")
    g.add_argument("--model", help="model for lines that name none")
    g.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the key (default OPENAI_API_KEY / ANTHROPIC_API_KEY "
        "/ GEMINI_API_KEY, else GOOGLE_API_KEY)",
    )
    g = p.add_argument_group("pace and limits")
    g.add_argument(
        "--concurrency",
        type=concurrency,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight: a number, or auto (default {DEFAULT_CONCURRENCY}): found "
        "from latency, for servers that queue instead of refusing (llama.cpp, vLLM, Ollama); "
        "out of the rate limiter's way once replies state rate limits",
    )
    g.add_argument("--rpm", type=positive_float, help="requests per minute (default: adaptive)")
    g.add_argument("--tpm", type=positive_float, help="tokens per minute (default: adaptive)")
    g.add_argument(
        "--itpm", type=positive_float, help="input tokens per minute (Anthropic-style split limit)"
    )
    g.add_argument(
        "--otpm", type=positive_float, help="output tokens per minute (charged from max_tokens)"
    )
    g.add_argument(
        "--max-outage",
        type=non_negative_float,
        default=DEFAULT_MAX_OUTAGE,
        metavar="SECONDS",
        help="wait out a server-wide outage this long before failing the remaining requests "
        f"(default {DEFAULT_MAX_OUTAGE:g})",
    )
    g.add_argument(
        "--request-timeout", type=positive_float, default=600.0, help="seconds per attempt"
    )
    g.add_argument("--timeout", type=positive_float, help="seconds for the whole run")
    g.add_argument(
        "--max-retries", type=int, default=5, help="retries per request after the first try"
    )
    g.add_argument(
        "--max-input-tokens",
        type=positive_int,
        help="reject lines whose prompt is estimated above this many tokens",
    )
    g.add_argument(
        "--service-tier",
        choices=SERVICE_TIERS,
        help="OpenAI service tier for realtime requests (a line's own service_tier wins): "
        "flex (batch price, slower; refusals for capacity are waited out, not failures), "
        "default, priority, or auto (flex, then default for a line flex keeps refusing). "
        "With --finish-by, flex and auto let late batches finish through flex",
    )
    g.add_argument(
        "--endpoint",
        choices=("chat", "responses"),
        default="chat",
        help="OpenAI route for simple JSONL lines and template requests: chat "
        "(/v1/chat/completions, the default) or responses (/v1/responses). A batch-format "
        'line names its own ("url"), so one file may mix both',
    )
    g = p.add_argument_group("templates (instead of INPUT)")
    g.add_argument("--template", help='prompt template, e.g. "Summarize this file: {content}"')
    g.add_argument("--files", metavar="GLOB", help="one request per file; {path}, {content}")
    g.add_argument(
        "--rows",
        metavar="PATH",
        help="one request per row; {column}. A CSV or JSONL file, a Parquet file or folder "
        "(pip install 'llmbatch[parquet]'), an Arrow IPC/Feather file, a Hugging Face "
        "dataset folder from save_to_disk ('llmbatch[datasets]'), or \"duckdb:SELECT ...\", a "
        "query over local files ('llmbatch[duckdb]')",
    )
    g.add_argument("--id-field", default="id", help="row field used as the id (default id)")
    g.add_argument("--system", help="system prompt for template requests")
    g.add_argument("--temperature", type=float, help="temperature for template requests")
    g.add_argument("--max-tokens", type=positive_int, help="max_tokens for template requests")
    g.add_argument("--json", action="store_true", help="ask template requests for JSON replies")
    g.add_argument(
        "--missing-field",
        choices=("error", "empty"),
        default="error",
        help="a --rows row without a template field: error (a bad row, default) or empty text",
    )
    g = p.add_argument_group("output and bookkeeping")
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip ids OUTPUT already holds (default on); --no-resume refuses an existing OUTPUT",
    )
    g.add_argument(
        "--retry-failed", action="store_true", help="also redo ids whose line holds an error"
    )
    g.add_argument(
        "--on-bad-line",
        choices=("fail", "skip"),
        default="fail",
        help="fail: exit 2 before sending anything (default); skip: report and run the rest",
    )
    g.add_argument("--cache", metavar="PATH", help="SQLite response cache")
    g.add_argument(
        "--prompt-cache",
        choices=("auto", "off"),
        default="auto",
        help="auto (default): send requests that share a prefix (system prompt, leading "
        "messages) together, warm each new prefix up with one request first, and mark it for "
        "the provider's prompt cache (OpenAI prompt_cache_key, Anthropic cache_control); "
        "off: input order, nothing added",
    )
    g.add_argument("--error-log", metavar="DIR", help="write failed requests to DIR/*.jsonl")
    g.add_argument("--prompt-section", default="", help="label recorded in the error log")
    g.add_argument("--stats-json", metavar="PATH", help="write the final stats as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_structured_arguments(p)
    g = p.add_argument_group("Ray (pip install 'llmbatch[ray]')")
    g.add_argument(
        "--ray",
        action="store_true",
        help="spread the requests over Ray workers sharing one cluster-wide rate limit",
    )
    g.add_argument("--ray-address", help="an existing cluster (default: start a local one)")
    g.add_argument(
        "--workers", type=positive_int, default=2, help="Ray workers (each --concurrency)"
    )
    add_observe_arguments(p)
    add_cost_arguments(p)
    add_batch_arguments(p)
    add_deadline_arguments(p)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def add_structured_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured output")
    g.add_argument(
        "--schema",
        metavar="FILE",
        help="JSON Schema every chat reply must fit: sent natively (OpenAI json_schema, "
        "Anthropic forced tool), each reply validated; the parsed object is written in the "
        "line's llmbatch.parsed",
    )
    g.add_argument(
        "--schema-mode",
        choices=SCHEMA_MODES,
        default="native",
        help="native (default): the provider's structured output; prompt: JSON mode plus the "
        "schema in the system prompt, for servers without schema support",
    )
    g.add_argument(
        "--max-invalid-retries",
        type=_count,
        default=DEFAULT_MAX_INVALID_RETRIES,
        metavar="N",
        help="re-ask a reply that breaks the schema up to N times, the validator's message "
        f"added to the conversation (default {DEFAULT_MAX_INVALID_RETRIES}); then the line "
        "fails as invalid_output, the reply kept",
    )
    g.add_argument(
        "--max-tokens-on-truncation",
        type=positive_int,
        metavar="N",
        help="retry a JSON reply cut off at max_tokens once with max_tokens N (default: no "
        "retry; the line fails as truncated, the partial reply kept)",
    )


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text}")
    return value


def add_observe_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("observability")
    g.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics during the run "
        "(pip install 'llmbatch[metrics]'; 0: any free port, printed)",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    g.add_argument(
        "--watch",
        type=port,
        metavar="PORT",
        help="serve a live page of the run at http://127.0.0.1:PORT/ while it runs (0: any "
        "free port, printed; pip install 'llmbatch[report]'); `llmbatch watch OUTPUT` serves "
        "it from another process",
    )
    g.add_argument(
        "--report",
        metavar="PATH",
        help="write an HTML report of OUTPUT (plots, slowest and failed requests) at the end "
        "(pip install 'llmbatch[report]')",
    )


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "cost (prices from the bundled genai-prices data unless given here)"
    )
    g.add_argument(
        "--max-cost",
        type=non_negative_float,
        metavar="USD",
        help="hard cap on money: stop sending before the spend could pass it (exit 4); "
        "rerun with a higher cap to go on",
    )
    g.add_argument(
        "--price-in",
        type=non_negative_float,
        metavar="USD",
        help="USD per 1M input tokens, for every model (self-hosted or unknown models)",
    )
    g.add_argument(
        "--price-out", type=non_negative_float, metavar="USD", help="USD per 1M output tokens"
    )
    g.add_argument(
        "--price-cached-in",
        type=non_negative_float,
        metavar="USD",
        help="USD per 1M input tokens read from the prompt cache (default: --price-in)",
    )


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "provider batch API (half price, results within 24 h)",
        "Submit the requests as OpenAI Batch / Anthropic Message Batches jobs instead of "
        "realtime calls. Batches are recorded in OUTPUT.batches.json before they are created; "
        "rerunning the same command re-attaches to them (never submits twice).",
    )
    g.add_argument("--batch-api", action="store_true", help="run through the provider's batch API")
    g.add_argument(
        "--batch-max-requests",
        type=positive_int,
        metavar="N",
        help="requests per batch at most (default the provider's cap: 50,000 / 100,000)",
    )
    g.add_argument(
        "--batch-max-tokens",
        type=positive_int,
        metavar="N",
        help="estimated input tokens per batch at most",
    )
    g.add_argument(
        "--batch-enqueued-tokens",
        type=positive_int,
        metavar="N",
        help="the provider's enqueued-token limit per model (OpenAI's batch queue limit): "
        "batches wait for room under it instead of failing; learned from the provider's "
        "refusal when not given",
    )
    g.add_argument(
        "--poll-interval",
        type=positive_float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help=f"first wait between status polls; backs off to 10 min (default "
        f"{DEFAULT_POLL_INTERVAL:g})",
    )
    g.add_argument(
        "--keep-files",
        action="store_true",
        help="leave the uploaded input and the result files at the provider (OpenAI)",
    )
    g.add_argument(
        "--expired",
        choices=("fail", "realtime"),
        default="fail",
        help="lines a batch leaves expired (or failed retryably): fail (written as "
        "batch_expired, default; --retry-failed redoes them) or realtime (sent realtime now)",
    )


def add_deadline_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "deadline (batch API and realtime in one run)",
        "Finish by a deadline at the lowest cost: batch API first, realtime for what would "
        "otherwise be late. Implies --batch-api.",
    )
    g.add_argument(
        "--finish-by",
        type=finish_by,
        metavar="TIME",
        help="finish by TIME (2026-12-01T09:00, local time unless a zone is given) or within "
        "a duration (6h, 1h30m)",
    )
    g.add_argument(
        "--prefer",
        choices=("cost", "speed"),
        default="cost",
        help="with --finish-by: cost (default) sends everything through the batch API and "
        "moves what is still open to realtime only when the deadline needs it; speed sends "
        "realtime what fits before the deadline and only the rest through the batch API",
    )
