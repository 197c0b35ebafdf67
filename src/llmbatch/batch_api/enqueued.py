"""Admission of provider batches under the provider's enqueued-token limit, per model.

    queue = EnqueuedTokens(limit=2_000_000)          # `--batch-enqueued-tokens`, or None
    if queue.fits("gpt-4o-mini", 300_000):
        queue.add(7, "gpt-4o-mini", 300_000)         # chunk 7's batch is live
    queue.remove(7)                                  # it ended: its tokens leave the queue
    queue.refused("gpt-4o-mini", 300_000, message)   # learn the limit from a refusal

OpenAI limits the input tokens waiting in an organization's batches, per model. A batch
created over the limit is not refused with a 4xx: it is created, then fails validation with
`errors.data[0].code == "token_limit_exceeded"` and a message that states the limit
("... Limit: 2,000,000 enqueued tokens. Please try again once some in_progress batches have
been completed."). The runner counts the estimated input tokens (`chars_to_tokens`) of this
run's live batches per model and creates a batch only when it fits under the limit: the one
given, or the one learned from a refusal (the stated limit; else the tokens this run had live
when it was refused, which the provider evidently counted as full).

A batch always fits when nothing of this run's is live for its model: the limit is the
organization's, and other programs' batches may be what fills it; the runner then waits
between tries (`RETRY_WAIT` doubling) for them to end, at most `MAX_HOLD` seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["MAX_HOLD", "REFUSAL_CODE", "EnqueuedTokens", "model_of", "stated_limit"]

REFUSAL_CODE = "token_limit_exceeded"
# How long a refused chunk waits for room, in all, before its lines fail: a batch's own
# completion window, so a stuck queue cannot hold a run longer than a batch would take.
MAX_HOLD = 24 * 3600.0
_LIMIT = re.compile(r"Limit:\s*([\d,_]+)\s*enqueued tokens", re.IGNORECASE)


def stated_limit(message: str) -> int | None:
    """The limit a refusal's message states ("Limit: 2,000,000 enqueued tokens"), if any."""
    match = _LIMIT.search(message)
    if match is None:
        return None
    digits = match.group(1).replace(",", "").replace("_", "")
    return int(digits) if digits else None


def model_of(key: str) -> str:
    """The model of a chunk key ("<endpoint> <model>"; the whole key for other providers)."""
    return key.split(" ", 1)[1] if " " in key else key


@dataclass(slots=True)
class EnqueuedTokens:
    """This run's live batch tokens per model, and the limit each model's batches stay under."""

    limit: int | None = None
    learned: dict[str, int] = field(default_factory=dict)
    live: dict[int, tuple[str, int]] = field(default_factory=dict)

    def limit_for(self, model: str) -> int | None:
        """The limit `model`'s batches stay under: the lower of the given and the learned."""
        learned = self.learned.get(model)
        if learned is None:
            return self.limit
        return learned if self.limit is None else min(self.limit, learned)

    def live_tokens(self, model: str) -> int:
        return sum(tokens for m, tokens in self.live.values() if m == model)

    def fits(self, model: str, tokens: int) -> bool:
        """Whether a batch of `tokens` more of `model` may be created now."""
        limit = self.limit_for(model)
        live = self.live_tokens(model)
        return limit is None or live == 0 or live + tokens <= limit

    def add(self, n: int, model: str, tokens: int) -> None:
        self.live[n] = (model, tokens)

    def remove(self, n: int) -> None:
        self.live.pop(n, None)

    def learn(self, model: str, limit: int) -> None:
        """Keep `limit` for `model` (a lower one learned before stays)."""
        known = self.learned.get(model)
        self.learned[model] = limit if known is None else min(known, limit)

    def refused(self, model: str, tokens: int, message: str) -> int | None:
        """A batch of `tokens` of `model` was refused (`message`), while the other live
        batches of this run (its own tokens already removed) held `live_tokens(model)`.
        Learn and return the limit to keep: the stated one when the refusal agrees with it
        by this run's estimate, else what was live (the provider counts more than the
        estimate, or other programs use the queue); None when nothing is learned (nothing
        of this run's was live and no limit is stated)."""
        live = self.live_tokens(model)
        stated = stated_limit(message)
        if stated is not None and live + tokens > stated:
            limit: int | None = stated
        elif live > 0:
            limit = live
        else:
            limit = stated
        if limit is not None:
            self.learn(model, limit)
        return limit
