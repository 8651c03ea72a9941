"""What a stated record context means on a legacy value once its target is migrated.

A legacy envelope binds no context: a database writer can copy record 0's legacy value into
record 1, and a decrypt that states ``record=1`` would return record 0's value. Before a
target is migrated that cannot be helped (every value there is legacy). Once the operator
declares it migrated (``HMD_MIGRATED_TARGETS``, after ``status --fail-if-legacy`` passed),
a legacy value there is out of place, and ``HMD_LEGACY_CONTEXT`` says what a decrypt stating a
record context on one does: ``refuse`` it (the default) or ``flag`` it in its audit event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["LegacyContext", "LegacyContextRule"]

ALL_TARGETS = "*"


class LegacyContext(StrEnum):
    REFUSE = "refuse"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class LegacyContextRule:
    """The migrated targets (``table.column``, ``column``, or ``*``) and what to do there."""

    action: LegacyContext = LegacyContext.REFUSE
    migrated: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, targets: str | None, action: LegacyContext) -> LegacyContextRule:
        """From ``HMD_MIGRATED_TARGETS`` (comma-separated) and ``HMD_LEGACY_CONTEXT``."""
        entries = frozenset(t.strip() for t in (targets or "").split(",") if t.strip())
        return cls(action, entries)

    def applies(self, stated: Mapping[str, str]) -> bool:
        """Whether a legacy value read with this stated context falls under the rule: the
        context names a record, and its field is migrated (in its table, when one is stated;
        in any table otherwise, so leaving the table out does not get around the rule)."""
        if not self.migrated:  # no target declared migrated (the rule's default)
            return False
        field_name = stated.get("field")
        if "record" not in stated or field_name is None:
            return False
        table = stated.get("table")
        return any(_covers(entry, field_name, table) for entry in self.migrated)


def _covers(entry: str, field_name: str, table: str | None) -> bool:
    """Whether a migrated target covers the field (in its table, when one is stated)."""
    if entry == ALL_TARGETS:
        return True
    entry_table, _, entry_field = entry.rpartition(".")
    return entry_field == field_name and (not entry_table or table in (None, entry_table))
