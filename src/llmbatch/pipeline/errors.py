"""The errors a run raises before it sends anything: a setting or the input is unusable.

    try:
        llmbatch.run(config)
    except llmbatch.ConfigError as exc:
        print(exc.field, exc)          # "max_cost", "max_cost: no price is known for ..."

The message names settings by their `RunConfig` field in backticks (`price_in`); the CLI
shows each as its flag (`--price-in`) with `ConfigError.render`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["ConfigError", "name_fields"]

_NAMED = re.compile(r"`([a-z_]+)`")


class ConfigError(Exception):
    """A setting, a path or the input cannot be used; nothing was sent.

    `field` is the `RunConfig` field at fault ("input" for the input itself). The message
    names fields in backticks; `str()` shows them plainly, `render(name)` as `name` says.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(self.render(lambda f: f))

    def render(self, name: Callable[[str], str]) -> str:
        return name_fields(self.message, name)


def name_fields(text: str, name: Callable[[str], str]) -> str:
    """`text` with each `field` in backticks named by `name` (bad-line messages use them too)."""
    return _NAMED.sub(lambda m: name(m.group(1)), text)
