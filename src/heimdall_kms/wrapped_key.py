"""The one codec of a wrapped DEK's text form, ``<provider>:v<N>:<body>`` (dependency-free).

Every provider stores its wrapped DEK behind the same prefix: the provider's name and the
version of the master key that wrapped it (Vault Transit writes ``vault:v3:…`` itself; the
other providers add the prefix to their own ciphertext). The body is the provider's own: a
provider states its name and the shape of its body once, as a :class:`WrappedCodec`, and
reads its stored text with it. An envelope's ``key_version`` is checked against this version
(SPEC §4.2), so parsing it lives here, once, and imports nothing from the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "HMAC_PREFIX",
    "WrappedCodec",
    "WrappedForm",
    "format_wrapped",
    "is_hmac_tag",
    "parse_wrapped",
    "wrapped_by",
]

# The master-key version: 1 and up, at most nine digits. One rule for both readers below.
_VERSION = r"[1-9][0-9]{0,8}"
_PROVIDER = re.compile(r"[a-z]{1,16}")
_FORM = re.compile(rf"({_PROVIDER.pattern}):v({_VERSION}):(\S+)")
HMAC_PREFIX = "hmac:"
# A keyed hash is ``hmac:`` and the same form, whose body is the base64 of a 32-byte
# HMAC-SHA256 tag (Vault Transit ``sha2-256`` and the local provider).
_TAG = re.compile(r"[A-Za-z0-9+/]{43}=")


@dataclass(frozen=True, slots=True)
class WrappedForm:
    """A wrapped DEK's text, split: who wrapped it, under which version, and the rest."""

    provider: str
    version: int
    body: str  # the provider's own ciphertext form (base64, or Azure's id:alg:base64url)

    def __repr__(self) -> str:
        return f"WrappedForm(provider={self.provider!r}, version={self.version})"


def parse_wrapped(text: str) -> WrappedForm | None:
    """Split ``<provider>:v<N>:<body>``; None when the text is not of that form."""
    match = _FORM.fullmatch(text)
    if match is None:
        return None
    return WrappedForm(match.group(1), int(match.group(2)), match.group(3))


@dataclass(frozen=True, slots=True)
class WrappedCodec:
    """One provider's wrapped DEKs: ``<provider>:v<N>:<body>``, ``body`` the shape of its own.

    :meth:`read` asks the three questions every provider asks of a stored wrapped DEK before
    it decodes the body: is the text of the form :func:`parse_wrapped` reads, does it name
    this provider, does ``body`` match the whole body. It asks them with one regular
    expression, built from ``body`` (which must use no numbered back-references).
    """

    provider: str
    body: re.Pattern[str]
    _own: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A name parse_wrapped would not read could never be read back: refused when made.
        if not _PROVIDER.fullmatch(self.provider):
            raise ValueError(f"not a provider name of the wrapped form: {self.provider!r}")
        object.__setattr__(self, "provider", str(self.provider))  # a ProviderName's plain text
        # The lookahead is parse_wrapped's rule for a body (one or more characters, none of
        # them white space), so a ``body`` that would allow more cannot widen the form.
        own = rf"{re.escape(self.provider)}:v({_VERSION}):(?=\S+\Z)({self.body.pattern})"
        object.__setattr__(self, "_own", re.compile(own, self.body.flags))

    def read(self, text: str) -> WrappedForm | None:
        """``text`` split when it is this provider's wrapped form; None for any other text."""
        match = self._own.fullmatch(text)
        if match is None:
            return None
        return WrappedForm(self.provider, int(match.group(1)), match.group(2))

    def write(self, version: int, body: str) -> str:
        """``<provider>:v<version>:<body>``, what this provider stores (:meth:`read` splits it)."""
        return format_wrapped(self.provider, version, body)


def wrapped_by(provider: str, body: str) -> re.Pattern[str]:
    """The form :func:`parse_wrapped` reads, for one provider and a body of its own (a regular
    expression): ``pattern.fullmatch(text)`` asks in one step what ``parse_wrapped`` and a check
    of the body would (a provider checks every wrapped DEK of a batch before sending it)."""
    return re.compile(f"{re.escape(provider)}:v{_VERSION}:(?:{body})")


def format_wrapped(provider: str, version: int, body: str) -> str:
    """The stored text of a wrapped DEK (the inverse of :func:`parse_wrapped`)."""
    return f"{provider}:v{version}:{body}"


def is_hmac_tag(value: object) -> bool:
    """Whether ``value`` is exactly a keyed-hash tag: ``hmac:<provider>:v<N>:<32 bytes b64>``.

    Anything more or less (``hmac:x:y:<plaintext>``) is not a tag.
    """
    if not isinstance(value, str) or not value.startswith(HMAC_PREFIX):
        return False
    form = parse_wrapped(value[len(HMAC_PREFIX) :])
    return form is not None and bool(_TAG.fullmatch(form.body))
