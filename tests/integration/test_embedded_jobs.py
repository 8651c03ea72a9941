"""Jobs run by code that holds only a ``Crypto`` (embedders, tests, benchmarks): the services
made from it (``JobServices.of``) do what the CLI's do, the rollback to the env-key format too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import heimdall_kms
from heimdall_kms.envelope import LegacyEnvelope, parse
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import JobState
from heimdall_kms.store import Target, open_store
from tests.integration.dbtables import UserTable
from tests.integration.test_migrate_faults import legacy_rows, local_env


class TestJobsGivenAFacade:
    def test_migrate_then_roll_back_to_the_env_key_format(self, tmp_path: Path) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(30))
        env = local_env(tmp_path)
        store = open_store(table.url, Target(table.table, "ssn"))
        with heimdall_kms.from_env(env) as crypto:
            migrated = run_migration(crypto, [store], MigrationOptions(batch_size=10))
            assert migrated.state is JobState.COMPLETED and migrated.totals.completed == 30
            back = run_reencrypt(
                crypto, [store], ReencryptOptions(batch_size=10, mode=ReencryptMode.LEGACY)
            )
            assert back.state is JobState.COMPLETED, back.stop_error
            assert back.totals.completed == 30
            stored = table.values()
            assert Counter(type(parse(v or "")) for v in stored.values()) == {LegacyEnvelope: 30}
            opened = crypto.decrypt_many(
                [parse(v or "") for v in stored.values()], actor="test", reason="check"
            )
        assert sorted(opened) == sorted(f"ssn-{i}" for i in range(1, 31))
