"""providers/vault/http.py: the Transit batch body's POST."""

from __future__ import annotations

from typing import Any

import hvac
import requests

from heimdall_kms.providers.vault.http import post_body


class _RecordingSession(requests.Session):
    """Answers every request with ``{}`` and records the headers it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *_: Any, **kwargs: Any) -> Any:
        self.sent.append(dict(kwargs.get("headers") or {}))
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.headers["Content-Type"] = "application/json"
        return response


class TestPostBody:
    def test_one_clients_token_and_namespace_do_not_reach_the_next_client(self) -> None:
        # hvac's adapters write the token and namespace into the headers they are given.
        first, second = _RecordingSession(), _RecordingSession()
        with_namespace = hvac.Client(
            url="http://127.0.0.1:1", token="s.first", namespace="team-a", session=first
        )
        plain = hvac.Client(url="http://127.0.0.1:1", token="s.second", session=second)
        post_body(with_namespace, "transit", "encrypt", "k", body=b"{}")
        post_body(plain, "transit", "encrypt", "k", body=b"{}")
        assert first.sent[0]["X-Vault-Namespace"] == "team-a"
        assert "X-Vault-Namespace" not in second.sent[0]
        assert second.sent[0]["X-Vault-Token"] == "s.second"
        assert second.sent[0]["Content-Type"] == "application/json"
