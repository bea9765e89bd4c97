"""The configuration errors, and the one "did you mean" hint every message uses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from steel_defect.errors import UserError


class ConfigError(UserError):
    """A configuration that cannot be used; the message says which key and why."""


class ComponentError(ConfigError):
    """A ``*.name`` no registry holds, or ``params`` its constructor does not accept.

    ``key_path`` locates the value (``loss.params.gama``); ``detail`` says what is wrong.
    """

    def __init__(self, key_path: str, detail: str):
        self.key_path, self.detail = key_path, detail
        super().__init__(f"config key '{key_path}': {detail}")

    def under(self, prefix: str) -> ComponentError:
        """The same error for a component nested under ``prefix`` (``loss.params``)."""
        return ComponentError(f"{prefix}.{self.key_path}", self.detail)


def did_you_mean(word: Any, choices: Iterable[Any], prefix: str = "") -> str:
    """`` (did you mean '<prefix>x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
