"""The base of every error that is the user's to fix, so that a command or a page can tell it
from a bug.

    class ConfigError(UserError): ...        # a bad config key, with the key path and choices
    raise UserError(f"--worst must be 0 or more, got {worst}")

A :class:`UserError` (a bad argument, config value, file or request) is printed by the CLI as
one line with exit status 2, and answered by the web apps with its message; any other exception,
a bare ``ValueError`` included, is a bug: the CLI prints its traceback and the web apps answer 500
with the traceback in the server's log. It is a ``ValueError``, so code that validates values and
catches ``ValueError`` still catches it.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message names the file, key or argument and the fix."""
