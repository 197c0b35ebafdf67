"""Clients: the `LLMClient` protocol and its implementations."""

from .anthropic import AnthropicClient
from .base import LLMClient
from .fake import FakeClient, fake_reply
from .openai import OpenAIClient
from .spec import ClientSpec

__all__ = [
    "AnthropicClient",
    "ClientSpec",
    "FakeClient",
    "LLMClient",
    "OpenAIClient",
    "fake_reply",
]
