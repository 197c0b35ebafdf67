"""Provider batch APIs (OpenAI Batch, Anthropic Message Batches, Gemini Batch): half the price,
by tomorrow.

    runner = BatchAPIRunner(OpenAIClient(model="gpt-4o-mini"), BatchAPIConfig("out.jsonl"))
    async for result in runner.stream(requests):
        ...                               # BatchResult, response.batch_api == True

Modules: `split` (chunks under the caps), `ledger` (the durable record next to the output),
`openai` / `anthropic` / `gemini` (the three APIs), `enqueued` (the enqueued-token limit),
`runner` (submit, re-attach, poll, collect), `events`.
"""

from .anthropic import AnthropicBatches, wire_id
from .backend import BatchBackend, BatchInfo, LineOutcome
from .events import BatchEnded, BatchEvent, BatchHeld, BatchPolled, BatchSubmitted
from .gemini import GEMINI_CAPS, GeminiBatches
from .ledger import ChunkRecord, Ledger, LedgerError, ledger_paths
from .openai import OpenAIBatches
from .providers import backend_for
from .runner import BatchAPIConfig, BatchAPIRunner, is_redoable
from .split import ANTHROPIC_CAPS, OPENAI_CAPS, Caps, Splitter

__all__ = [
    "ANTHROPIC_CAPS",
    "GEMINI_CAPS",
    "OPENAI_CAPS",
    "AnthropicBatches",
    "BatchAPIConfig",
    "BatchAPIRunner",
    "BatchBackend",
    "BatchEnded",
    "BatchEvent",
    "BatchHeld",
    "BatchInfo",
    "BatchPolled",
    "BatchSubmitted",
    "Caps",
    "ChunkRecord",
    "GeminiBatches",
    "Ledger",
    "LedgerError",
    "LineOutcome",
    "OpenAIBatches",
    "Splitter",
    "backend_for",
    "is_redoable",
    "ledger_paths",
    "wire_id",
]
