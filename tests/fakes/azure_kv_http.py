"""A local Azure Key Vault (keys) and Entra ID token endpoint: the documented wire format over
HTTPS, real cryptography.

No Key Vault emulator can be installed here (SPEC §10), so this speaks the Key Vault REST API
(``api-version`` 7.0 to 7.6 and 2025-07-01) for the operations heimdall-kms uses, and the
official ``azure-keyvault-keys`` and ``azure-identity`` clients talk to it unmodified:

* TLS with a ``trustme`` CA (:attr:`FakeKeyVault.ca_pem`); the Key Vault client refuses bearer
  tokens over plain HTTP.
* The challenge: a request without a valid bearer token is answered ``401`` with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``, as Key Vault does; the client then fetches a token for
  ``https://vault.azure.net/.default`` and repeats the request with its body.
* Entra ID for a confidential client: ``GET /<tenant>/v2.0/.well-known/openid-configuration``
  and ``POST /<tenant>/oauth2/v2.0/token`` (``grant_type=client_credentials``), so that
  ``ClientSecretCredential`` and ``DefaultAzureCredential``'s ``EnvironmentCredential`` work with
  ``AZURE_AUTHORITY_HOST`` pointing here (and instance discovery disabled: MSAL would ask
  ``login.microsoftonline.com`` about an unknown authority host).
* Keys: ``GET /keys/{name}[/{version}]``, ``GET /keys/{name}/versions`` (paged with
  ``nextLink``, in no particular order, as the service documents none), ``POST
  /keys/{name}/create``, ``POST /keys/{name}/rotate``, ``GET``/``PUT
  /keys/{name}/rotationpolicy`` (kept and answered; the fake never rotates by it), ``PATCH
  /keys/{name}/{version}`` (attributes, ``key_ops``, tags), ``POST
  /keys/{name}/{version}/wrapkey`` and ``/unwrapkey``, ``/sign`` and ``/verify`` (ES256 with
  a P-256 ``EC``/``EC-HSM`` key: the client sends the SHA-256 digest, the signature is the raw
  64 bytes r|s; a disabled version does not sign).
  JSON fields as the service names them: ``kid``, ``kty``, ``key_ops``, ``n``/``e`` and
  ``value`` as unpadded base64url, ``attributes.created``/``updated`` as Unix seconds, errors as
  ``{"error": {"code": "KeyNotFound", "message": "...", "innererror": {...}}}``.
* Azure RBAC data actions per principal (:data:`CRYPTO_OFFICER`, :data:`CRYPTO_USER`,
  :data:`CRYPTO_SERVICE_ENCRYPTION_USER`, :data:`UNWRAP_ONLY`): a missing one is ``403
  Forbidden`` with ``innererror.code = "ForbiddenByRbac"``. ``unwrapKey`` on a disabled version
  is ``403`` ``"Operation unwrapKey is not allowed on a disabled key."`` with ``innererror.code
  = "KeyDisabled"``; a wrap with a disabled version is allowed, as on the service.

Cryptography is real and independent of the ``cryptography`` package that the Azure SDK's
client-side wrap and heimdall-kms use: RSA keys (2048/3072/4096 bits, ``RSA`` or ``RSA-HSM``)
and RSA-OAEP-256 / RSA-OAEP come from pycryptodome, as do AES key wrap (RFC 3394, ``A256KW``
and friends) for ``oct-HSM`` keys (Managed HSM) and ECDSA P-256 (``signing_keys.py``). A
damaged wrapped key fails with ``400 BadParameter``, as the service's "Error occurred while
decoding OAEP padding." does.

Test switches on :class:`FakeKeyVault`: :meth:`~FakeKeyVault.inject` answers a status for every
request on a key (``429`` comes with ``Retry-After``, and ``x-ms-retry-after-ms`` when
``retry_after_ms`` is set); :meth:`~FakeKeyVault.revoke_tokens`
makes every issued token invalid; ``propagation_delay`` (seconds) makes a new version the one
``GET /keys/{name}`` answers, and an enable/disable apply to ``unwrapkey``, only that long after
the change (listings and ``GET`` of a version show it at once); ``latency`` delays
wrap/unwrap by a random time and ``max_in_flight`` counts the most of them served at once;
``requests`` records what was asked.
``docs/providers/azure.md`` lists what is not modelled.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trustme
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA1, SHA256
from Crypto.PublicKey import RSA

from tests.fakes.signing_keys import Curve, Encoding, SigningKey

__all__ = [
    "CRYPTO_OFFICER",
    "CRYPTO_SERVICE_ENCRYPTION_USER",
    "CRYPTO_USER",
    "UNWRAP_ONLY",
    "FakeKeyVault",
    "FakeKeyVaultServer",
    "Request",
    "running_fake_key_vault",
    "start_fake_key_vault",
]

JSON = dict[str, Any]

API_VERSIONS = frozenset({"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"})
RESOURCE = "https://vault.azure.net"
SCOPE = f"{RESOURCE}/.default"
_PREFIX = "Microsoft.KeyVault/vaults/keys/"
READ, CREATE, ROTATE, UPDATE, WRAP, UNWRAP, SIGN, VERIFY = (
    f"{_PREFIX}read",
    f"{_PREFIX}create/action",
    f"{_PREFIX}rotate/action",
    f"{_PREFIX}update/action",
    f"{_PREFIX}wrap/action",
    f"{_PREFIX}unwrap/action",
    f"{_PREFIX}sign/action",
    f"{_PREFIX}verify/action",
)
POLICY_READ, POLICY_WRITE = (
    "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
    "Microsoft.KeyVault/vaults/keyrotationpolicies/write",
)
# The data actions of Azure's built-in roles, as far as key operations go.
CRYPTO_OFFICER = frozenset(
    {READ, CREATE, ROTATE, UPDATE, WRAP, UNWRAP, SIGN, VERIFY, POLICY_READ, POLICY_WRITE}
)
CRYPTO_USER = frozenset({READ, UPDATE, WRAP, UNWRAP, SIGN, VERIFY})
CRYPTO_SERVICE_ENCRYPTION_USER = frozenset({READ, WRAP, UNWRAP})
UNWRAP_ONLY = frozenset({UNWRAP})

_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_DEFAULT_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
_AES_KW = {"A128KW": 16, "A192KW": 24, "A256KW": 32}


class _FaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner

    def body(self) -> JSON:
        error: JSON = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


@dataclass
class _Version:
    version: str
    kty: str
    created: int
    updated: int
    key_ops: list[str]
    rsa: RSA.RsaKey | None = None
    secret: bytes | None = None
    signing: SigningKey | None = None  # EC / EC-HSM, P-256
    enabled: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    # For ``propagation_delay``: when the version was added, and the ``enabled`` unwrap obeys
    # until ``enabled_at`` + the delay.
    added_at: float = 0.0
    served_enabled: bool = True
    enabled_at: float = 0.0

    def unwrap_enabled(self, now: float, delay: float) -> bool:
        return self.enabled if now >= self.enabled_at + delay else self.served_enabled


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorized: bool
    status: int


@dataclass
class _Principal:
    secret: str
    actions: frozenset[str]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(value: object, name: str) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise _FaultError(400, "BadParameter", f"Content of '{name}' is not base64url.")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _FaultError(400, "BadParameter", f"Content of '{name}' is not base64url.") from None


def _int_bytes(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


class FakeKeyVault:
    """The state of one vault (keys, principals, tokens) and the protocol logic."""

    def __init__(self, *, tenant: str = "72f988bf-0000-4000-8000-00000000cafe") -> None:
        self.tenant = tenant
        self.base_url = ""  # set when the server listens
        self.page_size = 25
        self.latency: tuple[float, float] | None = None
        self.max_in_flight = 0
        self.retry_after = "1"
        # When set, a 429 also carries x-ms-retry-after-ms (milliseconds), as Azure services
        # send it; azure-core and heimdall-kms read it before Retry-After.
        self.retry_after_ms: str | None = None
        self.requests: list[Request] = []
        self.token_requests = 0
        self._keys: dict[str, list[_Version]] = {}
        self._principals: dict[str, _Principal] = {}
        self._tokens: dict[str, str] = {}
        self._faults: dict[str, tuple[int, str]] = {}
        self._fault_budget: dict[str, int] = {}
        self._policies: dict[str, JSON] = {}
        self._in_flight = 0
        self._lock = threading.RLock()
        self.propagation_delay = 0.0

    # -- switches and direct set-up -------------------------------------------------------------

    def add_principal(self, client_id: str, secret: str, actions: frozenset[str]) -> None:
        """Register an app (service principal) with its client secret and RBAC data actions."""
        self._principals[client_id] = _Principal(secret, actions)

    def issue_token(self, client_id: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = client_id
        return token

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (as after a revoked session)."""
        with self._lock:
            self._tokens.clear()

    def inject(self, key_name: str, status: int, code: str = "", times: int | None = None) -> None:
        """Answer ``status`` to requests on the key (``*``: on every key): the next ``times``
        requests, or all of them until :meth:`clear`."""
        default = {401: "Unauthorized", 403: "Forbidden", 429: "Throttled"}
        with self._lock:
            self._faults[key_name] = (status, code or default.get(status, "ServiceUnavailable"))
            if times is not None:
                self._fault_budget[key_name] = times

    def clear(self, key_name: str) -> None:
        with self._lock:
            self._faults.pop(key_name, None)
            self._fault_budget.pop(key_name, None)

    def create_key(self, name: str, kty: str = "RSA", size: int = 2048) -> str:
        """Create a key (or a new version) directly, as an administrator would; its version id."""
        with self._lock:
            return self._add_version(name, kty, size, list(_DEFAULT_OPS), {}).version

    def versions(self, name: str) -> list[tuple[str, bool]]:
        """(version id, enabled) in creation order."""
        with self._lock:
            return [(v.version, v.enabled) for v in self._keys.get(name, [])]

    def set_enabled(self, name: str, version: str, enabled: bool) -> None:
        with self._lock:
            self._version(name, version).enabled = enabled

    # -- protocol ---------------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], JSON]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if len(segments) >= 2 and segments[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            return self._openid_configuration(segments[0])
        if len(segments) >= 2 and segments[1:] == ["oauth2", "v2.0", "token"] and method == "POST":
            return self._token(segments[0], body)
        authorized = False
        reply_headers: dict[str, str] = {}
        try:
            client_id = self._authenticate(headers.get("authorization", ""))
            authorized = client_id is not None
            if segments[:1] != ["keys"] or len(segments) < 2:
                raise _FaultError(404, "NotFound", "The requested resource was not found.")
            if query.get("api-version") not in API_VERSIONS:
                raise _FaultError(
                    400, "BadParameter", "The api-version parameter is missing or invalid."
                )
            if client_id is None:
                reply_headers["WWW-Authenticate"] = (
                    f'Bearer authorization="https://login.microsoftonline.com/{self.tenant}", '
                    f'resource="{RESOURCE}"'
                )
                raise _FaultError(
                    401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."
                )
            status, answer = 200, self._keys_api(method, segments[1:], query, body, client_id)
        except _FaultError as fault:
            if fault.status == 429:
                reply_headers["Retry-After"] = self.retry_after
                if self.retry_after_ms is not None:
                    reply_headers["x-ms-retry-after-ms"] = self.retry_after_ms
            status, answer = fault.status, fault.body()
        with self._lock:
            self.requests.append(Request(method, parts.path, authorized, status))
        return status, reply_headers, answer

    def _authenticate(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            return self._tokens.get(token.strip())

    def _keys_api(
        self, method: str, path: list[str], query: dict[str, str], raw: bytes, client_id: str
    ) -> JSON:
        name, rest = path[0], path[1:]
        if not _NAME.fullmatch(name):
            raise _FaultError(400, "BadParameter", "The key name is invalid.")
        fault = self._take_fault(name)
        if fault is not None:
            raise _FaultError(fault[0], fault[1], f"Injected {fault[0]} for this test.")
        action, handler = self._route(method, rest)
        if action not in self._principals[client_id].actions:
            raise _FaultError(
                403,
                "Forbidden",
                f"Caller is not authorized to perform action on resource. Action: '{action}'",
                "ForbiddenByRbac",
            )
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise _FaultError(400, "BadParameter", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _FaultError(400, "BadParameter", "The request body must be a JSON object.")
        with self._lock:
            if handler in ("wrapkey", "unwrapkey", "sign", "verify"):
                version = self._version(name, rest[0])
            else:
                return self._manage(handler, name, rest, query, body)
        if handler in ("sign", "verify"):
            return self._signature(handler, name, version, body)
        return self._crypto(handler, name, version, body)

    def _take_fault(self, name: str) -> tuple[int, str] | None:
        with self._lock:
            target = name if name in self._faults else "*"
            fault = self._faults.get(target)
            if fault is not None and target in self._fault_budget:
                self._fault_budget[target] -= 1
                if self._fault_budget[target] <= 0:
                    self._faults.pop(target)
                    self._fault_budget.pop(target)
            return fault

    @staticmethod
    def _route(method: str, rest: list[str]) -> tuple[str, str]:
        routes = {
            ("GET", 0, ""): (READ, "get"),
            ("GET", 1, "versions"): (READ, "versions"),
            ("POST", 1, "create"): (CREATE, "create"),
            ("POST", 1, "rotate"): (ROTATE, "rotate"),
            ("POST", 2, "wrapkey"): (WRAP, "wrapkey"),
            ("POST", 2, "unwrapkey"): (UNWRAP, "unwrapkey"),
            ("POST", 2, "sign"): (SIGN, "sign"),
            ("POST", 2, "verify"): (VERIFY, "verify"),
            ("GET", 1, "rotationpolicy"): (POLICY_READ, "policy_get"),
            ("PUT", 1, "rotationpolicy"): (POLICY_WRITE, "policy_put"),
        }
        last = rest[-1].lower() if rest else ""
        found = routes.get((method, len(rest), last))
        if found is None and len(rest) == 1 and method in ("GET", "PATCH"):
            found = (READ, "get") if method == "GET" else (UPDATE, "update")
        if found is None:
            raise _FaultError(405, "MethodNotAllowed", "The requested operation is not supported.")
        return found

    def _manage(
        self, handler: str, name: str, rest: list[str], query: dict[str, str], body: JSON
    ) -> JSON:
        if handler == "create":
            kty = str(body.get("kty", ""))
            size = body.get("key_size")
            default = 2048 if kty.startswith("RSA") else 256
            ops = body.get("key_ops") or list(_DEFAULT_OPS)
            attributes = body.get("attributes") or {}
            if kty in ("EC", "EC-HSM") and body.get("crv", "P-256") != "P-256":
                raise _FaultError(400, "BadParameter", "This fake has P-256 EC keys only.")
            version = self._add_version(
                name, kty, int(size or default), [str(o) for o in ops], body.get("tags") or {}
            )
            version.enabled = version.served_enabled = bool(attributes.get("enabled", True))
            return self._bundle(name, version)
        if handler == "rotate":
            current = self._version(name, "")
            size = current.rsa.size_in_bits() if current.rsa else len(current.secret or b"") * 8
            return self._bundle(
                name, self._add_version(name, current.kty, size, current.key_ops, {})
            )
        if handler == "versions":
            return self._list_versions(name, query)
        if handler in ("policy_get", "policy_put"):
            return self._rotation_policy(name, body if handler == "policy_put" else None)
        if handler == "get" and not rest:
            return self._bundle(name, self._served_latest(name))
        version = self._version(name, rest[0] if rest else "")
        if handler == "update":
            attributes = body.get("attributes") or {}
            if "enabled" in attributes:
                now = time.monotonic()
                version.served_enabled = version.unwrap_enabled(now, self.propagation_delay)
                version.enabled, version.enabled_at = bool(attributes["enabled"]), now
            if body.get("key_ops") is not None:
                version.key_ops = [str(o) for o in body["key_ops"]]
            if body.get("tags") is not None:
                version.tags = dict(body["tags"])
            version.updated = int(time.time())
        return self._bundle(name, version)

    def _rotation_policy(self, name: str, update: JSON | None) -> JSON:
        """GET or PUT ``/keys/{name}/rotationpolicy``. A key that never had one answers the
        service's default: notify 30 days before expiry, no automatic rotation."""
        self._version(name, "")  # 404 for a key that does not exist
        if update is not None:
            actions = update.get("lifetimeActions")
            if not isinstance(actions, list):
                raise _FaultError(400, "BadParameter", "lifetimeActions is required.")
            self._policies[name] = {
                "lifetimeActions": actions,
                "attributes": dict(update.get("attributes") or {}),
            }
        stored = self._policies.get(name) or {
            "lifetimeActions": [
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}
            ],
            "attributes": {},
        }
        return {"id": f"{self.base_url}/keys/{name}/rotationpolicy", **stored}

    def _list_versions(self, name: str, query: dict[str, str]) -> JSON:
        if name not in self._keys:
            raise self._not_found(name)
        # The service documents no order; answering by id makes callers sort for themselves.
        items = sorted(self._keys[name], key=lambda v: v.version)
        size = min(int(query.get("maxresults") or self.page_size), self.page_size)
        start = int(query.get("$skiptoken") or 0)
        page = items[start : start + size]
        answer: JSON = {
            "value": [
                {"kid": self._kid(name, v), "attributes": self._attributes(v), "tags": v.tags}
                for v in page
            ],
            "nextLink": None,
        }
        if start + size < len(items):
            answer["nextLink"] = (
                f"{self.base_url}/keys/{name}/versions?api-version={query['api-version']}"
                f"&$skiptoken={start + size}&maxresults={size}"
            )
        return answer

    def _crypto(self, handler: str, name: str, version: _Version, body: JSON) -> JSON:
        alg = str(body.get("alg", ""))
        value = _unb64(body.get("value"), "value")
        operation = "wrapKey" if handler == "wrapkey" else "unwrapKey"
        if operation not in version.key_ops:
            raise _FaultError(
                403, "Forbidden", f"Operation {operation} is not permitted on this key."
            )
        enabled = version.unwrap_enabled(time.monotonic(), self.propagation_delay)
        if operation == "unwrapKey" and not enabled:
            raise _FaultError(
                403,
                "Forbidden",
                "Operation unwrapKey is not allowed on a disabled key.",
                "KeyDisabled",
            )
        with self._busy():
            result = self._apply(version, alg, value, wrap=operation == "wrapKey")
        return {"kid": self._kid(name, version), "value": _b64(result)}

    def _signature(self, handler: str, name: str, version: _Version, body: JSON) -> JSON:
        """``sign`` (``value`` is the SHA-256 digest; the answer is the raw 64-byte r|s) and
        ``verify`` (``digest`` and the signature in ``value``), ES256 with a P-256 key."""
        operation = handler
        if operation not in version.key_ops:
            raise _FaultError(
                403, "Forbidden", f"Operation {operation} is not permitted on this key."
            )
        if operation == "sign" and not version.enabled:
            raise _FaultError(
                403, "Forbidden", "Operation sign is not allowed on a disabled key.", "KeyDisabled"
            )
        if version.signing is None or body.get("alg") != "ES256":
            raise _FaultError(
                400, "BadParameter", f"Algorithm '{body.get('alg')}' is not supported by this key."
            )
        digest = _unb64(body.get("value" if operation == "sign" else "digest"), "digest")
        if len(digest) != 32:
            raise _FaultError(400, "BadParameter", "ES256 takes a 32-byte SHA-256 digest.")
        with self._busy():
            if operation == "sign":
                signature = version.signing.sign_digest(digest, Encoding.RAW)
                return {"kid": self._kid(name, version), "value": _b64(signature)}
            given = _unb64(body.get("value"), "value")
            return {"value": version.signing.verify_digest(digest, given, Encoding.RAW)}

    @staticmethod
    def _apply(version: _Version, alg: str, value: bytes, *, wrap: bool) -> bytes:
        if version.rsa is not None and alg in ("RSA-OAEP-256", "RSA-OAEP"):
            digest = SHA256 if alg == "RSA-OAEP-256" else SHA1
            if wrap:
                return bytes(
                    PKCS1_OAEP.new(version.rsa.public_key(), hashAlgo=digest).encrypt(value)
                )
            try:
                return bytes(PKCS1_OAEP.new(version.rsa, hashAlgo=digest).decrypt(value))
            except ValueError:
                raise _FaultError(
                    400, "BadParameter", "Error occurred while decoding OAEP padding."
                ) from None
        if version.secret is not None and _AES_KW.get(alg) == len(version.secret):
            cipher = AES.new(version.secret, AES.MODE_KW)
            try:
                return bytes(cipher.seal(value) if wrap else cipher.unseal(value))
            except ValueError:
                raise _FaultError(
                    400, "BadParameter", "The wrapped key could not be unwrapped."
                ) from None
        raise _FaultError(400, "BadParameter", f"Algorithm '{alg}' is not supported by this key.")

    @contextmanager
    def _busy(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency is not None:
                time.sleep(random.uniform(*self.latency))
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _add_version(
        self, name: str, kty: str, size: int, ops: list[str], tags: dict[str, str]
    ) -> _Version:
        now = int(time.time())
        version = _Version(
            secrets.token_hex(16), kty, now, now, ops, tags=dict(tags), added_at=time.monotonic()
        )
        if kty in ("RSA", "RSA-HSM") and size in (2048, 3072, 4096):
            version.rsa = RSA.generate(size)
        elif kty == "oct-HSM" and size in (128, 192, 256):
            version.secret = secrets.token_bytes(size // 8)
        elif kty in ("EC", "EC-HSM"):
            version.signing = SigningKey.generate(Curve.P256)
        else:
            raise _FaultError(
                400, "BadParameter", f"Key type '{kty}' with size {size} is not supported."
            )
        self._keys.setdefault(name, []).append(version)
        return version

    def _served_latest(self, name: str) -> _Version:
        """The latest version as ``GET /keys/{name}`` answers it within the delay."""
        self._version(name, "")  # 404 for a key that does not exist
        versions = self._keys[name]
        now = time.monotonic()
        settled = [v for v in versions if now >= v.added_at + self.propagation_delay]
        return settled[-1] if settled else versions[0]

    def _version(self, name: str, version: str) -> _Version:
        versions = self._keys.get(name)
        if not versions:
            raise self._not_found(name)
        if not version:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise self._not_found(f"{name}/{version}")

    @staticmethod
    def _not_found(what: str) -> _FaultError:
        return _FaultError(
            404, "KeyNotFound", f"A key with (name/id) {what} was not found in this key vault."
        )

    def _kid(self, name: str, version: _Version) -> str:
        return f"{self.base_url}/keys/{name}/{version.version}"

    @staticmethod
    def _attributes(version: _Version) -> JSON:
        return {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
            "exportable": False,
        }

    def _bundle(self, name: str, version: _Version) -> JSON:
        key: JSON = {
            "kid": self._kid(name, version),
            "kty": version.kty,
            "key_ops": version.key_ops,
        }
        if version.rsa is not None:
            key["n"] = _b64(_int_bytes(version.rsa.n))
            key["e"] = _b64(_int_bytes(version.rsa.e))
        if version.signing is not None:
            x, y = version.signing.public_xy()
            key.update({"crv": "P-256", "x": _b64(x), "y": _b64(y)})
        return {"key": key, "attributes": self._attributes(version), "tags": version.tags}

    # -- Entra ID -------------------------------------------------------------------------------

    def _openid_configuration(self, tenant: str) -> tuple[int, dict[str, str], JSON]:
        if tenant != self.tenant:
            return 400, {}, {"error": "invalid_tenant", "error_description": "AADSTS90002"}
        base = f"{self.base_url}/{tenant}"
        return (
            200,
            {},
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
            },
        )

    def _token(self, tenant: str, raw: bytes) -> tuple[int, dict[str, str], JSON]:
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        with self._lock:
            self.token_requests += 1
        principal = self._principals.get(form.get("client_id", ""))
        if tenant != self.tenant:
            return 400, {}, {"error": "invalid_request", "error_description": "AADSTS90002"}
        if form.get("grant_type") != "client_credentials":
            return 400, {}, {"error": "unsupported_grant_type", "error_description": "AADSTS"}
        if principal is None or not secrets.compare_digest(
            principal.secret, form.get("client_secret", "")
        ):
            return 401, {}, {"error": "invalid_client", "error_description": "AADSTS7000215"}
        if SCOPE not in form.get("scope", "").split():
            return 400, {}, {"error": "invalid_scope", "error_description": "AADSTS70011"}
        token = self.issue_token(form["client_id"])
        answer = {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        return 200, {}, {**answer, "ext_expires_in": 3599}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, answer = self.server.vault.handle(method, self.path, headers, raw)
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _TLSServer(ThreadingHTTPServer):
    """TLS is negotiated in the request's own thread, so a slow client blocks no other."""

    daemon_threads = True
    vault: FakeKeyVault
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


@dataclass
class FakeKeyVaultServer:
    """A running fake: ``url`` (``https://127.0.0.1:PORT``) and the CA file to trust."""

    vault: FakeKeyVault
    url: str
    ca_pem: Path
    _server: _TLSServer
    _thread: threading.Thread

    def key_url(self, name: str) -> str:
        return f"{self.url}/keys/{name}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_fake_key_vault(vault: FakeKeyVault | None = None) -> FakeKeyVaultServer:
    """Start the HTTPS server on a free loopback port, with a fresh CA."""
    state = vault or FakeKeyVault()
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_pem = Path(tempfile.mkdtemp(prefix="fake-azure-kv-")) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server = _TLSServer(("127.0.0.1", 0), _Handler)
    server.vault = state
    server.context = context
    url = f"https://127.0.0.1:{server.server_address[1]}"
    state.base_url = url
    thread = threading.Thread(target=server.serve_forever, name="fake-azure-kv", daemon=True)
    thread.start()
    return FakeKeyVaultServer(state, url, ca_pem, server, thread)


@contextmanager
def running_fake_key_vault() -> Iterator[FakeKeyVaultServer]:
    server = start_fake_key_vault()
    try:
        yield server
    finally:
        server.stop()
