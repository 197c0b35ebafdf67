"""Clients: the `LLMClient` protocol and its implementations."""

from .base import LLMClient
from .fake import FakeClient, fake_reply

__all__ = ["FakeClient", "LLMClient", "fake_reply"]
