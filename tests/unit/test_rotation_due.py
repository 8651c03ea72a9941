"""Rotation due-ness by the KMS's clock, and the decision taken again under the lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import ProviderName
from heimdall_kms.errors import InvalidInputError
from heimdall_kms.jobs.retire import retire
from heimdall_kms.jobs.rotation import ClockSource, is_due, key_now, rotate
from heimdall_kms.providers import KeyInfo, KeyVersion
from heimdall_kms.providers.base import http_date
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring

KMS_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CADENCE = timedelta(days=90)


def info(age: timedelta, server_time: datetime | None) -> KeyInfo:
    return KeyInfo(
        provider=ProviderName.VAULT,
        key_identifier="k",
        latest_version=1,
        min_decryption_version=1,
        versions=(KeyVersion(1, KMS_NOW - age),),
        server_time=server_time,
    )


class TestDueByKmsClock:
    @pytest.mark.parametrize(
        ("age_days", "client_skew_days", "due"),
        [
            (89, 2, False),  # the client clock 2 days ahead does not make it due
            (89, -5, False),
            (90, -2, True),  # nor does a clock 2 days behind postpone it
            (91, 0, True),
        ],
    )
    def test_age_is_the_kms_time_minus_the_kms_creation_time(
        self, age_days: int, client_skew_days: int, due: bool
    ) -> None:
        key = info(timedelta(days=age_days), KMS_NOW)
        moment, clock = key_now(key, KMS_NOW + timedelta(days=client_skew_days))
        assert (moment, clock) == (KMS_NOW, ClockSource.KMS)
        assert is_due(key, now=moment, cadence=CADENCE) is due

    def test_without_a_server_time_the_local_clock_is_used_and_said(self) -> None:
        key = info(timedelta(days=89), None)
        local = KMS_NOW + timedelta(days=2)
        assert key_now(key, local) == (local, ClockSource.LOCAL)
        assert is_due(key, now=local, cadence=CADENCE)


class TestHttpDate:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("Mon, 01 Jun 2026 12:00:00 GMT", KMS_NOW),
            ("", None),
            (None, None),
            ("yesterday", None),
        ],
    )
    def test_parse(self, header: str | None, expected: datetime | None) -> None:
        assert http_date(header) == expected


class TestDecisionUnderTheLock:
    def test_a_rotation_made_while_waiting_for_the_lock_is_seen(self, tmp_path: Path) -> None:
        old = datetime.now(UTC) - timedelta(days=2)
        keyring = LocalKeyring(tmp_path / "kr.json", clock=lambda: old)
        keyring.ensure_key("k")
        kms = LocalDevProvider(LocalKeyring(tmp_path / "kr.json"), "k")
        sink = MemoryAuditSink()

        @contextlib.contextmanager
        def lock() -> Iterator[None]:
            # Another scheduler held the lock and rotated before this one got it.
            kms.rotate()
            yield

        result = rotate(kms, sink, actor="cron", if_due=True, cadence=timedelta(days=1), lock=lock)
        assert not result.rotated
        assert result.clock is ClockSource.LOCAL
        assert kms.describe().latest_version == 2  # only the other scheduler's rotation
        assert sink.events == []


class TestReason:
    """A reason given with a rotation or a retirement is audited: it must say something."""

    @pytest.mark.parametrize("reason", ["", "   ", "\t\n"])
    def test_a_blank_reason_is_refused_before_anything_changes(
        self, tmp_path: Path, reason: str
    ) -> None:
        keyring = LocalKeyring(tmp_path / "kr.json")
        keyring.ensure_key("k")
        kms = LocalDevProvider(LocalKeyring(tmp_path / "kr.json"), "k")
        sink = MemoryAuditSink()
        with pytest.raises(InvalidInputError, match="reason must not be blank"):
            rotate(kms, sink, actor="ops", if_due=False, cadence=CADENCE, reason=reason)
        with pytest.raises(InvalidInputError, match="reason must not be blank"):
            retire(kms, [], sink, below_version=1, actor="ops", reason=reason)
        assert kms.describe().latest_version == 1
        assert sink.events == []

    def test_a_reason_is_recorded_as_given(self, tmp_path: Path) -> None:
        keyring = LocalKeyring(tmp_path / "kr.json")
        keyring.ensure_key("k")
        kms = LocalDevProvider(LocalKeyring(tmp_path / "kr.json"), "k")
        sink = MemoryAuditSink()
        rotate(kms, sink, actor="ops", if_due=False, cadence=CADENCE, reason=" CHG-42 ")
        assert {event.reason for event in sink.events} == {" CHG-42 "}
