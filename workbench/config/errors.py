"""The one error every config check raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming the key and what is allowed."""
