"""The one speed trick for frozen, slotted dataclasses made once per value on a hot path.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (frozen blocks
plain assignment), one Python-level call per field. The slots' own descriptors set the same
fields without it: ``object.__new__`` and then each field's setter make the very object the
constructor makes (the tests of each user compare the two). Only for the exact class: a
subclass's own fields are its ``__init__``'s to set. This module imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["new_instance", "slot_setters"]

# An instance with no field set yet: each of its slots is then set by slot_setters' setters.
new_instance = object.__new__


def slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of ``cls``'s slots ``names``, in that order (a name that is not one of its
    slots raises ``KeyError`` when the module using it is imported)."""
    return tuple(vars(cls)[name].__set__ for name in names)
