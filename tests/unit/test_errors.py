"""The error tree: categories on the classes, and the documented exit-code table."""

from __future__ import annotations

import re
from pathlib import Path

from heimdall_kms import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_every_error_derives_from_the_base() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.HeimdallKMSError)
        assert cls.error_type and isinstance(cls.exit_code, int)


def test_error_types_are_unique() -> None:
    types = [getattr(errors, name).error_type for name in errors.__all__]
    assert len(types) == len(set(types))


def test_permission_denied_is_an_authentication_error() -> None:
    assert issubclass(errors.PermissionDeniedError, errors.AuthenticationError)


def test_only_transient_failures_are_retryable() -> None:
    retryable = {n for n in errors.__all__ if getattr(errors, n).retryable}
    assert retryable == {"KMSUnavailableError", "CircuitOpenError", "RateLimitedError"}


def test_exit_code_table_in_docs_matches_the_classes() -> None:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    documented: dict[str, int] = {}
    for code, classes in rows:
        for name in re.findall(r"`(\w+)`", classes):
            documented[name] = int(code)
    for name in errors.__all__:
        if name in ("HeimdallKMSError",):
            continue
        assert documented.get(name) == getattr(errors, name).exit_code, name
