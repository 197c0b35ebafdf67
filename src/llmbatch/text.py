"""The text of a request, and its token estimate: written once, used by every part.

    estimate_input_tokens(CompletionRequest(prompt="x" * 400))   # 100

Never downloads a tokenizer: characters / 4 is close enough for pacing and planning, and the
provider's reported usage corrects every estimate afterwards.
"""

from __future__ import annotations

import math

from .types import CompletionRequest

__all__ = ["CHARS_PER_TOKEN", "estimate_input_tokens"]

CHARS_PER_TOKEN = 4.0


def estimate_input_tokens(
    request: CompletionRequest, chars_per_token: float = CHARS_PER_TOKEN
) -> int:
    """Input tokens of `request`: its prompt, system prompt and message text / `chars_per_token`."""
    return math.ceil(request.text_length() / chars_per_token)
