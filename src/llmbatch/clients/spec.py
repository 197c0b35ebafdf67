"""A recipe for a client: what to build, where to find the key, never the key itself.

    spec = ClientSpec(provider="openai", base_url="http://vllm:8000/v1", model="qwen")
    client = spec.build()          # reads OPENAI_API_KEY (or api_key_env) now, here

Used where a client must be made somewhere else (a Ray worker) or from flags (the CLI):
the spec can be pickled and logged safely because it holds no secret. `provider` is one of
`PROVIDERS` (checked when the spec is made: a typo is an error, never silently OpenAI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..redact import public_url
from .anthropic import AnthropicClient
from .base import ClientConfigError
from .gemini import GeminiClient
from .openai import OpenAIClient
from .provider import ProviderClient

__all__ = ["DEFAULT_KEY_ENV", "PROVIDERS", "ClientSpec"]

PROVIDERS: dict[str, type[ProviderClient]] = {
    cls.name: cls for cls in (OpenAIClient, AnthropicClient, GeminiClient)
}
DEFAULT_KEY_ENV = {name: cls.key_env for name, cls in PROVIDERS.items()}


@dataclass(slots=True, frozen=True)
class ClientSpec:
    """How a worker builds its client. Holds the key's variable name, never the key.

    `max_connections=None` leaves the pool unbounded (the engine's concurrency decides).
    """

    provider: str = "openai"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            valid = ", ".join(sorted(PROVIDERS))
            raise ValueError(f"unknown provider {self.provider!r}: use one of {valid}")

    def __repr__(self) -> str:  # logged: the base URL without its credentials
        url = public_url(self.base_url) if self.base_url else None
        return (
            f"ClientSpec(provider={self.provider!r}, base_url={url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_connections={self.max_connections!r})"
        )

    @property
    def client_class(self) -> type[ProviderClient]:
        return PROVIDERS[self.provider]

    @property
    def key_env(self) -> str:
        return self.api_key_env or self.client_class.key_env

    def build(self) -> ProviderClient:
        key = os.environ.get(self.key_env, "")
        source = self.key_env
        if not key and self.api_key_env is None:
            for name in self.client_class.other_key_envs:  # e.g. GOOGLE_API_KEY
                if os.environ.get(name):
                    key, source = os.environ[name], name
                    break
        try:
            return self.client_class(
                model=self.model,
                base_url=self.base_url,
                api_key=key,
                max_connections=self.max_connections,
            )
        except ClientConfigError as exc:
            if exc.field != "api_key":
                raise
            raise ClientConfigError(exc.field, exc.reason, source=source) from None
