"""Clients: the `LLMClient` protocol, the `ProviderClient` base and its implementations."""

from .anthropic import AnthropicClient
from .base import ClientConfigError, LLMClient
from .fake import FakeClient, fake_reply
from .gemini import GeminiClient
from .openai import OpenAIClient
from .provider import ClientOptions, ProviderClient
from .spec import DEFAULT_KEY_ENV, PROVIDERS, ClientSpec

__all__ = [
    "DEFAULT_KEY_ENV",
    "PROVIDERS",
    "AnthropicClient",
    "ClientConfigError",
    "ClientOptions",
    "ClientSpec",
    "FakeClient",
    "GeminiClient",
    "LLMClient",
    "OpenAIClient",
    "ProviderClient",
    "fake_reply",
]
