"""One configuration key (:class:`Option`) and the error a bad configuration raises (:class:`ConfigError`).

The bottom layer of the configuration: ``utils.data`` declares the data keys with it and ``utils.config``
the training keys, then composes both into the run's configuration (and re-exports both names).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from utils.errors import ConfigError

__all__ = ["ConfigError", "Option"]


@dataclasses.dataclass(frozen=True)
class Option:
    """One configuration key: default, value type (``None`` = any YAML value), help text and valid values.

    ``low``/``high`` bound a number (for a list: every element); ``length`` is a list's required length.
    """

    default: Any
    type: Optional[type] = None
    help: str = ""
    choices: Optional[Sequence[Any]] = None
    short: Optional[str] = None  # e.g. "-b"
    low: Optional[float] = None
    high: Optional[float] = None
    length: Optional[int] = None

    @property
    def kind(self):
        if self.type is not None:
            return self.type
        if self.default is None:
            return None
        return type(self.default)
