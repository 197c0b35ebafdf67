"""The error every subcommand turns into exit code 2."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A flag or the input is unusable: exit 2 with this message, nothing sent."""
