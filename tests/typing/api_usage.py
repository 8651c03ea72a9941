"""The SPEC §5 facade as a user writes it; type-checked by mypy --strict, never executed."""

from __future__ import annotations

import heimdall_kms
from heimdall_kms.errors import HeimdallKMSError, IntegrityError


def usage() -> None:
    crypto = heimdall_kms.from_env()
    env = crypto.encrypt("123-45-6789", context={"field": "ssn", "record": "r1"})
    text: str = crypto.decrypt(
        env, actor="alice", reason="ticket-42", context={"field": "ssn", "record": "r1"}
    )
    envs = crypto.encrypt_many([("v1", {"field": "ssn", "record": "r1"})])
    texts: list[str] = crypto.decrypt_many(envs, actor="etl", reason="enrichment:geoip")
    again: str = heimdall_kms.Envelope.from_json(env.to_json()).to_json()
    try:
        crypto.decrypt(again, actor="a", reason="b")
    except IntegrityError:
        pass
    except HeimdallKMSError as exc:
        print(exc.error_type, exc.exit_code, text, texts)
    crypto.close()
