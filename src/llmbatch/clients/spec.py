"""A recipe for a client: what to build, where to find the key, never the key itself.

    spec = ClientSpec(provider="openai", base_url="http://vllm:8000/v1", model="qwen")
    client = spec.build()          # reads OPENAI_API_KEY (or api_key_env) now, here

Used where a client must be made somewhere else (a Ray worker) or from flags (the CLI):
the spec can be pickled and logged safely because it holds no secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._http import DEFAULT_MAX_CONNECTIONS, ProviderClient
from .anthropic import AnthropicClient
from .openai import OpenAIClient

__all__ = ["DEFAULT_KEY_ENV", "ClientSpec"]

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass(slots=True, frozen=True)
class ClientSpec:
    """How a worker builds its client. Holds the key's variable name, never the key."""

    provider: str = "openai"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def key_env(self) -> str:
        return self.api_key_env or DEFAULT_KEY_ENV[self.provider]

    def build(self) -> ProviderClient:
        key = os.environ.get(self.key_env, "")
        if self.provider == "anthropic":
            return AnthropicClient(
                model=self.model,
                base_url=self.base_url,
                api_key=key,
                max_connections=self.max_connections,
            )
        return OpenAIClient(
            model=self.model,
            base_url=self.base_url,
            api_key=key,
            max_connections=self.max_connections,
        )
