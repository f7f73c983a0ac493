"""``record``: a frozen dataclass for the type checker, built as a plain slotted one.

For the plain data made several times an operation (the cores' events and
effects, a match, a token's claims, a match ticket): a frozen dataclass's
``__init__`` costs about three to five times a plain one's, each field set
through ``object.__setattr__``. Nothing assigns to a record (the type
checker refuses it, as it would for a frozen dataclass); records compare by
value and are not hashed (a plain dataclass with ``eq`` has no hash, so
hashing one raises at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

__all__ = ["record"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def record(cls: type[_T]) -> type[_T]:
    """``cls`` as a slotted dataclass, frozen to the type checker only."""
    return dataclass(slots=True)(cls)
