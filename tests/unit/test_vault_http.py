"""providers/vault/http.py: the Transit batch body's POST, and how a request is prepared."""

from __future__ import annotations

from typing import Any

import hvac
import pytest
import requests
import requests.structures

from heimdall_kms.providers.vault.http import VaultAdapter, post_body


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


class TestPreparedRequest:
    """``VaultAdapter._prepared`` makes what ``requests.Request(...).prepare()`` makes."""

    @staticmethod
    def _both(
        method: str, url: str, params: dict[str, Any], data: object, json: object
    ) -> tuple[requests.PreparedRequest, requests.PreparedRequest]:
        adapter = VaultAdapter(base_uri="http://127.0.0.1:1")
        headers = requests.structures.CaseInsensitiveDict(
            {"X-Vault-Token": "s.t", "Content-Type": "application/json"}
        )
        expected = requests.Request(
            method, url, headers=headers, params=params or None, data=data, json=json
        ).prepare()
        # Twice: the second time the URL's preparation is the one kept from the first.
        adapter._prepared(method, url, headers, params, data, json)
        return adapter._prepared(method, url, headers, params, data, json), expected

    @pytest.mark.parametrize(
        ("method", "url", "params", "data", "json"),
        [
            ("POST", "http://127.0.0.1:8200/v1/transit/encrypt/k", {}, b'{"a":1}', None),
            ("POST", "https://vault.example:8200/v1/transit/decrypt/k%2Fx", {}, None, {"b": 2}),
            ("GET", "http://127.0.0.1:8200/v1/transit/keys/k", {"list": "true"}, None, None),
            ("GET", "http://127.0.0.1:8200/v1/sys/health?standbyok=true", {}, None, None),
            ("POST", "http://user:secret@127.0.0.1:8200/v1/auth/x/login", {}, b"{}", None),
            ("GET", "http://vault.bücher.example/v1/a b/ü", {}, None, None),
        ],
    )
    def test_it_equals_requests_own_preparation(
        self, method: str, url: str, params: dict[str, Any], data: object, json: object
    ) -> None:
        made, expected = self._both(method, url, params, data, json)
        assert made.method == expected.method
        assert made.url == expected.url
        assert dict(made.headers) == dict(expected.headers)
        assert made.body == expected.body
        assert made.hooks == expected.hooks
        assert list(made._cookies or []) == list(expected._cookies or [])

    def test_a_bad_url_is_refused_every_time(self) -> None:
        adapter = VaultAdapter(base_uri="http://127.0.0.1:1")
        headers = requests.structures.CaseInsensitiveDict()
        for _ in range(2):
            with pytest.raises(requests.exceptions.InvalidURL):
                adapter._prepared("GET", "http://[::1/v1/x", headers, {}, None, None)
