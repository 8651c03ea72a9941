"""Token bucket, metered provider, progress view, targets file, census, classification."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from heimdall_kms import primitives
from heimdall_kms.cli.progress import ProgressView
from heimdall_kms.errors import InvalidInputError, StoreError
from heimdall_kms.jobs.classify import ValueKind, classify
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.rate import FLOOR, TokenBucket
from heimdall_kms.jobs.report import TargetReport
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring
from heimdall_kms.store import Target, load_targets
from tests.legacy_data import legacy_envelope


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_paces_to_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    for _ in range(30):
        bucket.acquire()
    # 10 tokens in the bucket at the start, then 20 more at 10 per second.
    assert clock.now == pytest.approx(2.0)


def test_token_bucket_refills_while_idle_and_zero_means_unlimited() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.acquire()
    clock.now += 1.0
    assert bucket.acquire() == 0.0
    unlimited = TokenBucket(0, clock=clock, sleep=clock.sleep)
    assert all(unlimited.acquire(1000) == 0.0 for _ in range(100))


def test_metered_provider_counts_and_paces(tmp_path: Path) -> None:
    clock = FakeClock()
    keyring = LocalKeyring(tmp_path / "k.json")
    keyring.ensure_key("k")
    metered = MeteredProvider(
        LocalDevProvider(keyring, "k"), TokenBucket(2, clock=clock, sleep=clock.sleep)
    )
    deks = [primitives.new_dek() for _ in range(100)]
    for _ in range(4):
        wrapped = metered.wrap_many(deks, [{}] * 100)
    metered.unwrap_many([w.ciphertext for w in wrapped], [{}] * 100)
    assert metered.wrap_many([], []) == []  # an empty batch costs no call
    assert metered.calls == {"wrap": 4, "unwrap": 1}
    assert metered.total_calls == 5
    assert clock.now == pytest.approx(1.5)  # 5 calls at 2/s with a burst of 2


def test_progress_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    view = ProgressView("migrate", stream=stream, interval=10, clock=clock)
    target = TargetReport("t.c", total=100)
    with view:
        view(target)
        target.completed = 50
        clock.now = 5
        view(target)  # throttled
        clock.now = 11
        view(target)
        target.completed = 100
        clock.now = 12
        view(target)  # the last one always shows
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("migrate t.c: 50/100 (5 values/s, ETA 11s")
    assert lines[2].startswith("migrate t.c: 100/100")


def test_progress_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    target = TargetReport("t.c", total=10, completed=4)
    with ProgressView("migrate", stream=stream) as view:
        view(target)
    assert "migrate t.c" in stream.getvalue()
    assert "4/10" in stream.getvalue()


def test_metrics_gauge_and_registry() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_progress(total=10, completed=7, failed=1)
    assert registry.get_sample_value("heimdall_reencryption_progress", {"status": "total"}) == 10
    assert registry.get_sample_value("heimdall_reencryption_progress", {"status": "completed"}) == 7
    assert registry.get_sample_value("heimdall_reencryption_progress", {"status": "failed"}) == 1


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, ValueKind.NULL),
        ("[REDACTED]", ValueKind.REDACTED),
        ("sha256:" + "0" * 64, ValueKind.HASH),
        ("123-45-6789", ValueKind.PLAINTEXT),
        ('{"some": "json document"}', ValueKind.PLAINTEXT),
        (legacy_envelope("ab" * 32, "x"), ValueKind.LEGACY),
        (
            '{"ciphertext": "!!", "nonce": "", "key_id": "a", "algorithm": "AES-256-GCM"}',
            ValueKind.UNPARSEABLE,
        ),
        ('{"encryption_version": "kms_v9"}', ValueKind.UNPARSEABLE),
    ],
)
def test_classify(value: str | None, kind: ValueKind) -> None:
    assert classify(value).kind is kind


def test_targets_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        'database = "sqlite:///x.db"\n[[targets]]\ntable = "a"\ncolumn = "b"\n'
        '[[targets]]\ntable = "s.c"\ncolumn = "d"\nid_column = "pk"\n'
    )
    loaded = load_targets(path)
    assert loaded.database == "sqlite:///x.db"
    assert loaded.targets == (Target("a", "b"), Target("s.c", "d", "pk"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not toml [", "not valid TOML"),
        ("", "needs at least one [[targets]]"),
        ('[[targets]]\ntable = "a"\n', "target 1: 'column' is required"),
        ('[[targets]]\ntable = "a"\ncolumn = "b"\ncolour = "c"\n', "unknown key 'colour'"),
        ('[[targets]]\ntable = "a; drop"\ncolumn = "b"\n', "not a plain SQL identifier"),
        (
            '[[targets]]\ntable = "a"\ncolumn = "b"\n[[targets]]\ntable = "a"\ncolumn = "b"\n',
            "listed twice",
        ),
        ('extra = 1\n[[targets]]\ntable = "a"\ncolumn = "b"\n', "unknown key 'extra'"),
        ('database = 5\n[[targets]]\ntable = "a"\ncolumn = "b"\n', "'database' must be a string"),
        ('targets = "a"\n', "needs at least one [[targets]]"),
        ('[[targets]]\ntable = "a"\ncolumn = "b"\nid_column = 5\n', "'id_column' must be"),
        ('[[targets]]\ntable = "a"\ncolumn = "b"\njson_path = 5\n', "'json_path' must be"),
        ('[[targets]]\ntable = "a"\ncolumn = "b"\n' * 1001, "more than 1000 targets"),
    ],
)
def test_targets_file_errors_name_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as caught:
        load_targets(path)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_target_identifiers_are_checked() -> None:
    with pytest.raises(StoreError):
        Target('x"; drop table y; --', "c")
    with pytest.raises(StoreError):
        Target("a.b.c", "c")


@pytest.mark.parametrize("id_column", ["v", "V"])
def test_a_target_whose_id_column_is_its_column_is_refused(id_column: str) -> None:
    """A job would bind each value to its own old text (its row id) and then overwrite it:
    every value written would fail authentication from then on."""
    with pytest.raises(StoreError, match="is the column itself"):
        Target("t", "v", id_column)


def test_token_bucket_backs_off_under_throttling_and_recovers() -> None:
    clock = FakeClock()
    bucket = TokenBucket(40, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        bucket.slow_down()
    assert bucket.rate == 5
    for _ in range(100):
        bucket.slow_down()
    assert bucket.rate == FLOOR  # the floor: a job never stops entirely
    for _ in range(100):
        bucket.speed_up()
    assert bucket.rate == 40  # never above what was configured
