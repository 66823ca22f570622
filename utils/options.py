"""One configuration key (:class:`Option`): ``utils.data`` declares the data keys with it, ``utils.config`` the rest."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from utils.errors import ConfigError

__all__ = ["ConfigError", "Option"]


@dataclasses.dataclass(frozen=True)
class Option:
    """A key's default, type, help text and valid values; ``low``/``high`` bound a number (in a list: each),
    ``length`` is a list's length, ``flags`` its other spellings (``-b``, timm's name), listed first."""

    default: Any
    kind: type
    help: str
    choices: Optional[Sequence[Any]] = None
    flags: Sequence[str] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    length: Optional[int] = None
