"""The batch API of a client's provider.

backend = backend_for(OpenAIClient(model="gpt-4o-mini"))     # an OpenAIBatches
"""

from __future__ import annotations

from ..clients.provider import ProviderClient
from .anthropic import AnthropicBatches
from .backend import BatchBackend
from .gemini import GeminiBatches
from .openai import OpenAIBatches

__all__ = ["BATCH_PROVIDERS", "backend_for"]

BATCH_PROVIDERS = ("openai", "anthropic", "gemini")  # the providers whose batch API is spoken here


def backend_for(client: ProviderClient) -> BatchBackend:
    """The batch API of `client`'s provider. `ValueError` for a provider without one."""
    if client.name == "openai":
        return OpenAIBatches(client)
    if client.name == "anthropic":
        return AnthropicBatches(client)
    if client.name == "gemini":
        return GeminiBatches(client)
    raise ValueError(
        f"provider {client.name!r} has no batch API here ({', '.join(BATCH_PROVIDERS)})"
    )
