"""The one HTTP path to Vault: an hvac adapter (:class:`VaultAdapter`) every call goes through.

hvac is designed to be extended at its adapter (``hvac.adapters.Adapter.request`` is the
method subclasses implement; ``hvac.Client(adapter=...)`` takes the class). This one is
hvac's ``JSONAdapter`` with a leaner send. Measured here, ``requests.Session.request`` costs
about 1 ms of CPU per Transit batch request on top of the HTTP exchange: it re-reads the proxy
and CA-bundle environment (and ``~/.netrc``) on every call, and runs its hooks and cookie
handling. So the adapter prepares the request itself, merges the environment once per Vault
address and TLS setting (exactly as ``requests`` merges it), and hands the request to the
session's own transport adapter: the same connection pool, TLS settings (``verify``,
``cert``), proxies and keep-alive. hvac's own calls (login, key metadata, rotate) and the
provider's batch requests take this same path.

Errors are raised by hvac's own ``RawAdapter._raise_for_error`` (``hvac.utils.raise_for_error``
and hvac's exception classes), with the ``Retry-After`` header read onto the exception, so the
provider translates them in one place. A redirect (a Vault standby that does not forward, or
anything answering in Vault's place) is never followed: ``requests`` would send the
``X-Vault-Token`` header along to whatever address the ``Location`` names. The
:func:`refuse_redirect` check runs on every answer here, and stays a hook on the session for
anything else that might use it.
"""

from __future__ import annotations

import threading
import urllib.parse
from datetime import datetime
from typing import Any

import hvac
import hvac.adapters
import hvac.exceptions
import requests
import requests.structures
from requests.sessions import merge_setting

from heimdall_kms.errors import KMSError
from heimdall_kms.providers.base import http_date
from heimdall_kms.providers.deadline import deadline
from heimdall_kms.providers.retry_after import retry_after_seconds

__all__ = [
    "VaultAdapter",
    "on_vault_adapter",
    "post_body",
    "post_json",
    "refuse_redirect",
    "retry_after_seconds",
]

_EnvironmentKey = tuple[str, str, object, object, object]
_MAX_URLS = 256


class VaultAdapter(hvac.adapters.JSONAdapter):  # type: ignore[misc] # hvac has no type hints
    """hvac's JSONAdapter, sending through the session's transport adapter; no redirects."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._environment: dict[_EnvironmentKey, dict[str, Any]] = {}
        self._urls: dict[str, str] = {}  # each URL as PreparedRequest.prepare_url makes it
        self._answered = threading.local()

    def server_time(self) -> datetime | None:
        """The ``Date`` of the last response this thread received (Vault's clock), if any."""
        # Kept as Vault sent it and read here: parsing it cost about 16 µs per request, and
        # only key metadata (describe) asks for it.
        return http_date(getattr(self._answered, "date", None))

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        raise_exception: bool = True,
        **kwargs: Any,
    ) -> Any:
        """What ``RawAdapter.request`` does, sent without ``Session.request``; a 200 with a
        JSON body is answered as a dict, anything else as the response (``JSONAdapter``).

        Raises:
            hvac.exceptions.VaultError: Vault answered with an error status.
            KMSError: Vault answered with a redirect.
            requests.exceptions.RequestException: no answer (connection, timeout, TLS).
        """
        while "//" in url:  # as RawAdapter: Vault reads '//' as '/'
            url = url.replace("//", "/")
        url = self.urljoin(self.base_uri, url)
        headers = self._headers(headers, kwargs.pop("wrap_ttl", None))
        options = {**self._kwargs, **kwargs}
        params = dict(options.pop("params", None) or {})
        if self.strict_http and method.lower() == "list":
            method, params["list"] = "get", "true"
        response = self._send(method, url, headers, params, options)
        self._answered.date = response.headers.get("Date")
        if not response.ok and raise_exception and not self.ignore_exceptions:
            self._raise_with_retry_after(method, url, response)
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                pass
        return response

    def _headers(self, headers: dict[str, str] | None, wrap_ttl: object) -> dict[str, str]:
        """The request's headers and Vault's own (``RawAdapter``'s)."""
        headers = dict(headers or {})
        if self.request_header:
            headers["X-Vault-Request"] = "true"
        if self.token:
            headers["X-Vault-Token"] = self.token
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        if wrap_ttl:
            headers["X-Vault-Wrap-TTL"] = str(wrap_ttl)
        return headers

    def _raise_with_retry_after(self, method: str, url: str, response: requests.Response) -> None:
        """Raise hvac's error for the status, with the ``Retry-After`` Vault asked for."""
        try:
            self._raise_for_error(method, url, response)
        except hvac.exceptions.VaultError as exc:
            # Vault/OpenBao send Retry-After on a quota's 429 when the quota config enables
            # response headers (sys/quotas/config enable_rate_limit_response_headers).
            exc.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, Any],
        options: dict[str, Any],
    ) -> requests.Response:
        session = self.session
        prepared = self._prepared(
            method.upper(),
            url,
            merge_setting(
                headers, session.headers, dict_class=requests.structures.CaseInsensitiveDict
            ),
            params,
            options.pop("data", None),
            options.pop("json", None),
        )
        settings = self._settings(session, url, options)
        timeout = options.get("timeout")
        # The timeout bounds every read; the deadline bounds the whole exchange (deadline.py).
        with deadline(float(timeout) if isinstance(timeout, int | float) else 30.0, "Vault"):
            response = session.get_adapter(url).send(prepared, timeout=timeout, **settings)
            response.content  # noqa: B018 - read it now, so the connection goes back to the pool
        return refuse_redirect(response)

    def _prepared(  # noqa: PLR0917 - the request's parts, as requests.Request takes them
        self,
        method: str,
        url: str,
        headers: requests.structures.CaseInsensitiveDict[str],
        params: dict[str, Any],
        data: Any,
        json: Any,
    ) -> requests.PreparedRequest:
        """What ``requests.Request(method, url, headers=..., params=..., data=..., json=...)
        .prepare()`` makes, with each URL's preparation kept once made.

        Measured here, preparing a Transit batch request cost about 120 µs of CPU, 0.5 µs per
        value of a 250-value batch: about 37 of them re-parsing and re-quoting the same few URLs
        (``PreparedRequest.prepare_url`` is a function of the URL and its query alone), about
        28 building the ``Request`` object that is read once. The steps and their order are
        ``PreparedRequest.prepare``'s, given what ``Request`` defaults to
        (``tests/unit/test_vault_http.py`` compares the two).
        """
        prepared = requests.PreparedRequest()
        prepared.prepare_method(method)
        if params:
            prepared.prepare_url(url, params)
        else:
            known = self._urls.get(url)
            if known is None:
                prepared.prepare_url(url, None)
                known = prepared.url
                assert known is not None  # prepare_url sets it, or raises
                if len(self._urls) >= _MAX_URLS:  # a bound, should a caller make many paths
                    self._urls.clear()
                self._urls[url] = known
            prepared.url = known
        prepared.prepare_headers(headers)
        prepared.prepare_cookies(None)
        prepared.prepare_body([] if data is None else data, [], json)
        prepared.prepare_auth(None, url)
        prepared.prepare_hooks(None)
        return prepared

    def _settings(
        self, session: requests.Session, url: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(url)
        proxies = options.get("proxies") or {}
        verify, cert = options.get("verify"), options.get("cert")
        key = (parts.scheme, parts.netloc, tuple(sorted(proxies.items())), verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            merged = session.merge_environment_settings(url, proxies, False, verify, cert)
            settings = self._environment[key] = {
                name: merged[name] for name in ("proxies", "verify", "cert")
            }
        return settings


def on_vault_adapter(client: hvac.Client) -> hvac.Client:
    """``client`` if it sends through a :class:`VaultAdapter`, else a client that does, with
    the same session (connection pool, TLS), address, token, namespace, timeout and proxies.

    (A new client rather than ``client.adapter = ...``: hvac 2.x's setter does not reach the
    auth-method and secrets-engine classes, which would keep the old adapter.)
    """
    if isinstance(client.adapter, VaultAdapter):
        return client
    old = client.adapter
    options = old._kwargs  # what hvac's own Adapter.from_adapter reads
    return hvac.Client(
        url=old.base_uri,
        token=old.token or "",  # never None: hvac would read VAULT_TOKEN / ~/.vault-token
        cert=options.get("cert"),
        verify=options.get("verify"),
        timeout=options.get("timeout"),
        proxies=options.get("proxies"),
        allow_redirects=False,
        session=old.session,
        adapter=VaultAdapter,
        namespace=old.namespace,
        strict_http=old.strict_http,
        request_header=old.request_header,
    )


def post_json(client: hvac.Client, *path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``/v1/<path parts, each URL-quoted>``; the decoded JSON answer.

    Raises:
        hvac.exceptions.VaultError: Vault answered with an error status.
        KMSError: Vault answered with a redirect.
        requests.exceptions.RequestException: no answer (connection, timeout, TLS).
    """
    document = client.adapter.post(_api_path(path), json=body)
    return document if isinstance(document, dict) else {}


def post_body(client: hvac.Client, *path: str, body: bytes) -> dict[str, Any]:
    """:func:`post_json` for a body already encoded as JSON.

    Raises:
        As :func:`post_json`.
    """
    # A fresh dict per call: hvac's adapters write the token and namespace into the headers
    # they are given, so a shared one would carry them to the next client.
    headers = {"Content-Type": "application/json"}  # what requests sets for json=
    document = client.adapter.post(_api_path(path), data=body, headers=headers)
    return document if isinstance(document, dict) else {}


def _api_path(path: tuple[str, ...]) -> str:
    return "/v1/" + "/".join(urllib.parse.quote(part, safe="") for part in path)


def refuse_redirect(response: requests.Response, *_: Any, **__: Any) -> requests.Response:
    """A redirect from Vault is an error, never followed (also a ``requests`` response hook).

    Raises:
        KMSError: the answer is a redirect (HTTP 301/302/303/307/308 with a Location).
    """
    if response.is_redirect:
        raise KMSError(
            f"Vault answered with a redirect (HTTP {response.status_code}); it is not followed, "
            "so the token is never sent to another address: point HMD_VAULT_ADDR at the active "
            "node (or let standbys forward requests)"
        )
    return response
