"""How ``HMD_KMS_KEY_ID`` names an AWS KMS key, and the bounded memory of what it resolved to.

No boto3 here. AWS users name a key four ways (a key id, a key ARN, an alias name or an alias
ARN); all four are accepted for AWS's own (native) rotation. The alias-per-version scheme
derives ``alias/<name>/v<n>`` from the name, so it needs an alias name.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from heimdall_kms.errors import ConfigurationError

__all__ = ["BoundedCache", "KeyReference", "ReferenceKind", "parse_key_reference"]

_K = TypeVar("_K")
_V = TypeVar("_V")

_KEY_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS_NAME = r"alias/(?!aws/)[A-Za-z0-9/_-]{1,250}"
_ARN = r"arn:aws(?:-[a-z]+)*:kms:[a-z0-9-]{1,32}:[0-9]{12}:"
_FORMS = (
    ("key_id", re.compile(_KEY_ID)),
    ("key_arn", re.compile(_ARN + "key/" + _KEY_ID)),
    ("alias", re.compile(_ALIAS_NAME)),
    ("alias_arn", re.compile(_ARN + _ALIAS_NAME)),
)
# The names alias/<name>/v<digits> belong to the alias-per-version scheme.
_VERSION_ALIAS = re.compile(r".*/v[0-9]+")


class ReferenceKind(StrEnum):
    KEY_ID = "key_id"
    KEY_ARN = "key_arn"
    ALIAS = "alias"
    ALIAS_ARN = "alias_arn"


@dataclass(frozen=True, slots=True)
class KeyReference:
    """``HMD_KMS_KEY_ID`` as given, and which of AWS's four forms it is."""

    text: str
    kind: ReferenceKind

    @property
    def is_alias(self) -> bool:
        return self.kind in (ReferenceKind.ALIAS, ReferenceKind.ALIAS_ARN)


def parse_key_reference(text: str) -> KeyReference:
    """Which form of AWS key name ``text`` is.

    Raises:
        ConfigurationError: none of the four, an AWS-managed ``alias/aws/...``, or a name
            ending in ``/v<n>`` (those are the alias-per-version scheme's).
    """
    for kind, pattern in _FORMS:
        if pattern.fullmatch(text):
            if kind.startswith("alias") and _VERSION_ALIAS.fullmatch(text):
                break
            return KeyReference(text, ReferenceKind(kind))
    raise ConfigurationError(
        "HMD_KMS_KEY_ID: expected an AWS key id, key ARN, alias name (alias/NAME, not "
        "alias/aws/..., not ending in /v<n>) or alias ARN; see docs/providers/aws.md"
    )


class BoundedCache(Generic[_K, _V]):
    """At most ``size`` entries, the least recently used dropped first.

    Holds identifiers only (key ids, version numbers), never key material. Two threads that
    miss the same entry at once both resolve it; that costs a request, never a wrong answer.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = max(1, size)
        self._entries: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
