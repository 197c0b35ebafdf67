"""Clients: the `LLMClient` protocol and its implementations."""

from .anthropic import AnthropicClient
from .base import LLMClient
from .fake import FakeClient, fake_reply
from .openai import OpenAIClient

__all__ = ["AnthropicClient", "FakeClient", "LLMClient", "OpenAIClient", "fake_reply"]
