"""The abstract envelope; :meth:`Envelope.from_json` is the one place that reads the version."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from heimdall_kms.kinds import EnvelopeFormat

__all__ = ["ALGORITHM", "Envelope"]

ALGORITHM = "AES-256-GCM"


class Envelope:
    """A stored, encrypted field value: ``kms_v1`` or the legacy env-key form.

    Not an ``abc.ABC``: ``isinstance`` against a class whose metaclass is ABCMeta runs
    ``ABCMeta.__instancecheck__`` (Python code) on every miss, and the facade and the jobs ask
    "which format is this?" once or more per value, so the exact-class tricks that would avoid
    it are not needed anywhere. The abstract methods are still marked for the type checker.
    """

    __slots__ = ()
    encryption_version: ClassVar[EnvelopeFormat]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON object as stored."""
        raise NotImplementedError  # the type checker refuses a class that lacks it

    @abstractmethod
    def aad(self) -> bytes:
        """The associated data the ciphertext is authenticated with."""
        raise NotImplementedError

    def to_json(self) -> str:
        """Compact JSON text, as stored in a field."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, source: str | bytes | Mapping[str, Any]) -> Envelope:
        """Parse stored text (or an already-parsed object) into the envelope of its version.

        Raises:
            MalformedEnvelopeError: not JSON, too large, not an envelope, an unknown
                ``encryption_version``, or a field of the wrong form.
        """
        from heimdall_kms.envelope import parse  # noqa: PLC0415 - the package imports this module.

        return parse(source)
