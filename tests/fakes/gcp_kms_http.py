"""A local Cloud KMS v1 server for the tests: the documented wire format, real cryptography.

No Cloud KMS emulator can be installed here (SPEC §10), so this speaks the Cloud KMS v1 API
itself, for the methods heimdall-kms uses, and the official ``google-cloud-kms`` client talks
to it unmodified:

* over REST: the JSON mapping of ``google/cloud/kms/v1/service.proto`` (paths such as
  ``POST /v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/**}:encrypt``, camelCase
  fields, ``bytes`` as base64, int64 wrappers such as ``plaintextCrc32c`` as decimal strings,
  enums as numbers when the client asks ``$alt=json;enum-encoding=int``), errors as
  ``{"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}``;
* over gRPC (:func:`start_fake_kms` with ``grpc=True``): the same operations behind the
  ``google.cloud.kms.v1.KeyManagementService`` service, messages serialized with the proto
  classes the client library ships, errors as gRPC status codes.

Cryptography is real and independent of heimdall-kms's own: each CryptoKeyVersion holds a
random 256-bit key and encrypts with AES-256-GCM from pycryptodome (the ``cryptography``
package that heimdall-kms uses is not involved). The ciphertext names its version, as Cloud
KMS ciphertexts do, and authenticates the CryptoKey's name and the caller's
``additionalAuthenticatedData``, so a wrong AAD, another key, or a flipped bit fails with
INVALID_ARGUMENT. A version that is not ENABLED refuses with FAILED_PRECONDITION. CRC32C is
computed here with its own table (not google-crc32c) and checked both ways.
ASYMMETRIC_SIGN keys (``EC_SIGN_P256_SHA256``, ``EC_SIGN_ED25519``) have no primary version
and no rotation period; ``asymmetricSign`` on a version takes a ``digest.sha256`` (P-256, a
DER signature) or the ``data`` (Ed25519), and ``getPublicKey`` answers the version's PEM, as
Cloud KMS documents (pycryptodome keys, ``signing_keys.py``). The IAM roles
``roles/cloudkms.signer``, ``publicKeyViewer`` and ``signerVerifier`` are modelled.

Test switches on :class:`FakeKMS`: :meth:`~FakeKMS.inject` answers a status (401
UNAUTHENTICATED, 403 PERMISSION_DENIED, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...) for
requests on a resource; :meth:`~FakeKMS.corrupt` flips a byte of a response's ciphertext or
plaintext while keeping the checksum of the original; :meth:`~FakeKMS.unverified` answers
``verified*Crc32c: false``; ``pending_generation`` makes new versions start in
PENDING_GENERATION; ``propagation_delay`` (seconds) makes a new primary version and a
version state change (disable, enable) take effect for encrypt/decrypt only that long after
the change, while reads show it at once, as Cloud KMS documents ("eventually consistent"),
and with ``mixed_propagation = n`` one encrypt in n still uses the old primary meanwhile;
:meth:`~FakeKMS.scheduled_rotation` does what Cloud KMS's rotation schedule does;
``latency`` delays each request by a random time, and ``max_in_flight`` counts the most
requests served at once; :meth:`~FakeKMS.add_service_account` turns on authentication
(self-signed service-account JWTs, verified) and IAM (predefined Cloud KMS roles).
``docs/providers/gcp.md`` lists what is not modelled.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from tests.fakes.signing_keys import Curve, Encoding, SigningKey

__all__ = ["FakeKMS", "FakeKMSServer", "StatusError", "crc32c", "start_fake_kms"]

JSON = dict[str, Any]

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# Enum numbers from google/cloud/kms/v1/resources.proto, for `enum-encoding=int`.
ENUMS = {
    "state": {
        "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED": 0,
        "ENABLED": 1,
        "DISABLED": 2,
        "DESTROYED": 3,
        "DESTROY_SCHEDULED": 4,
        "PENDING_GENERATION": 5,
    },
    "purpose": {"CRYPTO_KEY_PURPOSE_UNSPECIFIED": 0, "ENCRYPT_DECRYPT": 1, "ASYMMETRIC_SIGN": 5},
    "protectionLevel": {"PROTECTION_LEVEL_UNSPECIFIED": 0, "SOFTWARE": 1, "HSM": 2},
    "algorithm": {
        "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED": 0,
        "GOOGLE_SYMMETRIC_ENCRYPTION": 1,
        "EC_SIGN_P256_SHA256": 12,
        "EC_SIGN_ED25519": 40,
    },
}
# The signing algorithms modelled, and the curve of their keys.
SIGNING = {"EC_SIGN_P256_SHA256": Curve.P256, "EC_SIGN_ED25519": Curve.ED25519}
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
MAX_PLAINTEXT = 64 * 1024
MAGIC = b"\x0bGK"  # ciphertext = MAGIC | version (uint32) | nonce (12) | AES-GCM body | tag (16)
HEADER = len(MAGIC) + 4 + 12
# The IAM permission each method checks, and the predefined roles that grant them (Google's
# "Cloud KMS roles and permissions" page; only the permissions of these methods are listed).
PERMISSIONS = {
    "create_key_ring": "cloudkms.keyRings.create",
    "get_key_ring": "cloudkms.keyRings.get",
    "create_crypto_key": "cloudkms.cryptoKeys.create",
    "get_crypto_key": "cloudkms.cryptoKeys.get",
    "encrypt": "cloudkms.cryptoKeyVersions.useToEncrypt",
    "decrypt": "cloudkms.cryptoKeyVersions.useToDecrypt",
    "update_crypto_key_primary_version": "cloudkms.cryptoKeys.update",
    "create_crypto_key_version": "cloudkms.cryptoKeyVersions.create",
    "list_crypto_key_versions": "cloudkms.cryptoKeyVersions.list",
    "get_crypto_key_version": "cloudkms.cryptoKeyVersions.get",
    "update_crypto_key_version": "cloudkms.cryptoKeyVersions.update",
    "asymmetric_sign": "cloudkms.cryptoKeyVersions.useToSign",
    "get_public_key": "cloudkms.cryptoKeyVersions.viewPublicKey",
}
_VIEW = {
    "cloudkms.keyRings.get",
    "cloudkms.cryptoKeys.get",
    "cloudkms.cryptoKeyVersions.get",
    "cloudkms.cryptoKeyVersions.list",
}
ROLES = {
    "roles/cloudkms.cryptoKeyEncrypterDecrypter": {
        "cloudkms.cryptoKeyVersions.useToEncrypt",
        "cloudkms.cryptoKeyVersions.useToDecrypt",
    },
    "roles/cloudkms.cryptoKeyEncrypter": {"cloudkms.cryptoKeyVersions.useToEncrypt"},
    "roles/cloudkms.cryptoKeyDecrypter": {"cloudkms.cryptoKeyVersions.useToDecrypt"},
    "roles/cloudkms.viewer": _VIEW,
    "roles/cloudkms.signer": {"cloudkms.cryptoKeyVersions.useToSign"},
    "roles/cloudkms.publicKeyViewer": {"cloudkms.cryptoKeyVersions.viewPublicKey"},
    "roles/cloudkms.signerVerifier": {
        "cloudkms.cryptoKeyVersions.useToSign",
        "cloudkms.cryptoKeyVersions.useToVerify",
        "cloudkms.cryptoKeyVersions.viewPublicKey",
    },
    # Cloud KMS Admin manages keys but may not use them (no cryptographic operations).
    "roles/cloudkms.admin": _VIEW
    | {
        "cloudkms.keyRings.create",
        "cloudkms.cryptoKeys.create",
        "cloudkms.cryptoKeys.update",
        "cloudkms.cryptoKeyVersions.create",
        "cloudkms.cryptoKeyVersions.update",
    },
}
_SCOPES = {
    "https://www.googleapis.com/auth/cloudkms",
    "https://www.googleapis.com/auth/cloud-platform",
}


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum Cloud KMS uses; 0xE3069283 for b"123456789"."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class StatusError(Exception):
    """An error answer: a google.rpc.Code name and a message."""

    def __init__(self, status: str, message: str, *, retry_delay: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_delay = retry_delay  # seconds: a google.rpc.RetryInfo detail when set

    def rest_error(self) -> JSON:
        """The REST error body, its RetryInfo (when set) in ``details`` as Google sends it."""
        error: JSON = {"code": HTTP_STATUS[self.status], "message": self.message}
        error["status"] = self.status
        if self.retry_delay is not None:
            error["details"] = [
                {"@type": RETRY_INFO_TYPE, "retryDelay": f"{self.retry_delay:g}s"},
            ]
        return {"error": error}


@dataclass
class _Version:
    number: int
    secret: bytes = field(repr=False)
    created: datetime
    state: str = "ENABLED"  # what reads (get, list) show at once
    # What encrypt/decrypt obey until ``state_at`` + the propagation delay (Cloud KMS: "a
    # disabled version takes effect eventually").
    served_state: str = "ENABLED"
    state_at: float = 0.0
    signing: SigningKey | None = None  # an ASYMMETRIC_SIGN key's version

    def effective(self, now: float, delay: float) -> str:
        return self.state if now >= self.state_at + delay else self.served_state


@dataclass
class _Key:
    name: str
    created: datetime
    purpose: str = "ENCRYPT_DECRYPT"
    algorithm: str = "GOOGLE_SYMMETRIC_ENCRYPTION"
    versions: dict[int, _Version] = field(default_factory=dict)
    primary: int | None = None
    rotation_period: str | None = None
    # The primary encrypt uses until ``primary_at`` + the propagation delay.
    served_primary: int | None = None
    primary_at: float = 0.0

    encrypts: int = 0  # within the delay, for ``mixed_propagation``

    def effective_primary(self, now: float, delay: float, mixed: int = 0) -> int | None:
        if now >= self.primary_at + delay:
            return self.primary
        if mixed:  # most requests reach replicas that have seen the change, one in ``mixed`` not
            self.encrypts += 1
            return self.served_primary if self.encrypts % mixed == 0 else self.primary
        return self.served_primary


@dataclass
class _Fault:
    status: str
    after: int
    times: int | None
    retry_delay: float | None = None
    seen: int = 0


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _unb64(body: JSON, name: str) -> bytes:
    text = body.get(name, "")
    if not isinstance(text, str):
        raise StatusError("INVALID_ARGUMENT", f"Invalid value at '{name}', expected base64 bytes")
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise StatusError("INVALID_ARGUMENT", f"Invalid value at '{name}' (TYPE_BYTES)") from None


def _int64(body: JSON, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StatusError("INVALID_ARGUMENT", f"Invalid value at '{name}' (TYPE_INT64)") from None


def _check_crc(body: JSON, data: bytes, field_name: str, crc_name: str) -> bool:
    expected = _int64(body, crc_name)
    if expected is None:
        return False
    if expected != crc32c(data):
        raise StatusError(
            "INVALID_ARGUMENT",
            f"The checksum in field {crc_name} did not match the data in field {field_name}.",
        )
    return True


class FakeKMS:
    """The state and the operations of the fake, independent of the transport."""

    def __init__(self, *, clock: Callable[[], datetime] = _now) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._rings: dict[str, datetime] = {}
        self._keys: dict[str, _Key] = {}
        self._faults: dict[str, _Fault] = {}
        self._corrupt: dict[str, int] = {}
        self._unverified: set[str] = set()
        self.pending_generation = False
        # Seconds before a primary-version change or a version state change is applied by
        # encrypt/decrypt (reads show it at once), as Cloud KMS documents for both.
        self.propagation_delay = 0.0
        # When n > 0: within the delay, encrypt uses the new primary except one request in n.
        self.mixed_propagation = 0
        self.latency = 0.0  # seconds: each request waits a random time up to this
        self.calls: Counter[str] = Counter()
        self.max_in_flight = 0
        self._in_flight = 0
        self._accounts: dict[str, tuple[Any, set[str]]] = {}

    # -- test switches ------------------------------------------------------------------------

    def inject(
        self,
        resource: str,
        status: str,
        *,
        after: int = 0,
        times: int | None = None,
        retry_delay: float | None = None,
    ) -> None:
        """Answer ``status`` to requests on ``resource`` (or below it), after ``after``
        successful ones, ``times`` times (forever when None); with ``retry_delay`` (seconds)
        the error carries a ``google.rpc.RetryInfo``, as Cloud KMS's quota errors do."""
        if status not in HTTP_STATUS:
            raise ValueError(f"unknown status {status}")
        with self._lock:
            self._faults[resource] = _Fault(status, after, times, retry_delay)

    def add_service_account(self, email: str, public_key_pem: str, *roles: str) -> None:
        """Trust a service account and grant it roles. Once one is added, every request needs
        ``Authorization: Bearer`` with a self-signed JWT (RS256) of a trusted account, as the
        client sends for a service-account key; else 401 UNAUTHENTICATED. A method outside the
        account's roles is answered 403 PERMISSION_DENIED."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {unknown}")
        granted: set[str] = set()
        for role in roles:
            granted |= ROLES[role]
        with self._lock:
            self._accounts[email] = (RSA.import_key(public_key_pem), granted)

    def clear(self, resource: str) -> None:
        with self._lock:
            self._faults.pop(resource, None)
            self._corrupt.pop(resource, None)
            self._unverified.discard(resource)

    def corrupt(self, resource: str, times: int = 1) -> None:
        """Flip a byte of the next ``times`` encrypt/decrypt answers on ``resource``, keeping
        the CRC32C of the original bytes: what a fault on the way back looks like."""
        with self._lock:
            self._corrupt[resource] = times

    def unverified(self, resource: str) -> None:
        """Answer encrypt with ``verified*Crc32c: false``, as a server that never saw the
        request's checksums (a proxy that dropped them) would."""
        with self._lock:
            self._unverified.add(resource)

    def scheduled_rotation(self, key_name: str) -> int:
        """What Cloud KMS does when a key's rotation period elapses: a new version, made primary."""
        with self._lock:
            key = self._key(key_name)
            version = self._add_version(key, "ENABLED")
            self._set_primary(key, version.number)
            return version.number

    def version_state(self, key_name: str, number: int) -> str:
        with self._lock:
            return self._key(key_name).versions[number].state

    # -- dispatch -----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        resource: str,
        query: JSON,
        body: JSON,
        authorization: str | None = None,
    ) -> JSON:
        """Run one API method; ``resource`` is the request's name or parent."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                # Requests finish out of order, as they do against the real service.
                time.sleep(random.uniform(0, self.latency))
            with self._lock:
                self.calls[method] += 1
                self._check_faults(resource)
                self._authorize(method, authorization)
                handler: Callable[[str, JSON, JSON], JSON] = getattr(self, f"_{method}")
                return handler(resource, query, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _check_faults(self, resource: str) -> None:
        for prefix, fault in self._faults.items():
            if resource != prefix and not resource.startswith(prefix + "/"):
                continue
            fault.seen += 1
            if fault.seen <= fault.after:
                continue
            if fault.times is not None:
                if fault.times <= 0:
                    continue
                fault.times -= 1
            raise StatusError(
                fault.status, f"Injected {fault.status} for tests.", retry_delay=fault.retry_delay
            )

    def _authorize(self, method: str, authorization: str | None) -> None:
        if not self._accounts:
            return  # no service account added: anonymous callers are served
        email = self._verified_caller(authorization)
        if email is None:
            raise StatusError(
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if PERMISSIONS[method] not in self._accounts[email][1]:
            raise StatusError(
                "PERMISSION_DENIED",
                f"Permission '{PERMISSIONS[method]}' denied on resource (or it may not exist).",
            )

    def _verified_caller(self, authorization: str | None) -> str | None:
        scheme, _, token = (authorization or "").partition(" ")
        parts = token.split(".")
        if scheme != "Bearer" or len(parts) != 3:
            return None
        try:
            header, claims, signature = (
                json.loads(_unb64url(parts[0])),
                json.loads(_unb64url(parts[1])),
                _unb64url(parts[2]),
            )
        except (ValueError, binascii.Error):
            return None
        email = claims.get("iss")
        account = self._accounts.get(email) if isinstance(email, str) else None
        if account is None or header.get("alg") != "RS256" or claims.get("sub") != email:
            return None
        try:
            digest = SHA256.new(f"{parts[0]}.{parts[1]}".encode())
            pkcs1_15.new(account[0]).verify(digest, signature)
        except ValueError:
            return None
        now = self._clock().timestamp()
        scopes = set(str(claims.get("scope", "")).split())
        audience_ok = str(claims.get("aud", "")).startswith("https://cloudkms.googleapis.com")
        if not float(claims.get("iat", now + 1)) <= now < float(claims.get("exp", 0)):
            return None
        return email if scopes & _SCOPES or audience_ok else None

    def _seconds(self) -> float:
        return self._clock().timestamp()

    def _set_primary(self, key: _Key, number: int) -> None:
        now = self._seconds()
        key.served_primary = key.effective_primary(now, self.propagation_delay)
        key.primary, key.primary_at = number, now

    def _set_state(self, version: _Version, state: str) -> None:
        now = self._seconds()
        version.served_state = version.effective(now, self.propagation_delay)
        version.state, version.state_at = state, now

    def _matching(self, switches: dict[str, int] | set[str], resource: str) -> str | None:
        for prefix in switches:
            if resource == prefix or resource.startswith(prefix + "/"):
                return prefix
        return None

    # -- resources ----------------------------------------------------------------------------

    def _key(self, name: str) -> _Key:
        key = self._keys.get(name)
        if key is None:
            raise StatusError("NOT_FOUND", f"{name} not found.")
        return key

    def _version(self, name: str) -> tuple[_Key, _Version]:
        key_name, sep, number = name.rpartition("/cryptoKeyVersions/")
        key = self._key(key_name) if sep else None
        version = key.versions.get(int(number)) if key and number.isdigit() else None
        if key is None or version is None:
            raise StatusError("NOT_FOUND", f"{name} not found.")
        return key, version

    def _add_version(self, key: _Key, state: str) -> _Version:
        number = max(key.versions, default=0) + 1
        version = _Version(number, os.urandom(32), self._clock(), state, served_state=state)
        if key.algorithm in SIGNING:
            version.signing = SigningKey.generate(SIGNING[key.algorithm])
        key.versions[number] = version
        return version

    def _key_json(self, key: _Key) -> JSON:
        document: JSON = {
            "name": key.name,
            "purpose": key.purpose,
            "createTime": _timestamp(key.created),
            "versionTemplate": {"protectionLevel": "SOFTWARE", "algorithm": key.algorithm},
            "destroyScheduledDuration": "2592000s",
        }
        if key.primary is not None:
            document["primary"] = self._version_json(key, key.versions[key.primary])
        if key.rotation_period:
            document["rotationPeriod"] = key.rotation_period
        return document

    def _version_json(self, key: _Key, version: _Version) -> JSON:
        document: JSON = {
            "name": f"{key.name}/cryptoKeyVersions/{version.number}",
            "state": version.state,
            "protectionLevel": "SOFTWARE",
            "algorithm": key.algorithm,
            "createTime": _timestamp(version.created),
        }
        if version.state != "PENDING_GENERATION":
            document["generateTime"] = _timestamp(version.created)
        return document

    def _create_key_ring(self, parent: str, query: JSON, body: JSON) -> JSON:
        ring_id = query.get("keyRingId") or ""
        if not ring_id:
            raise StatusError("INVALID_ARGUMENT", "key_ring_id is required.")
        name = f"{parent}/keyRings/{ring_id}"
        if name in self._rings:
            raise StatusError("ALREADY_EXISTS", f"{name} already exists.")
        self._rings[name] = self._clock()
        return {"name": name, "createTime": _timestamp(self._rings[name])}

    def _get_key_ring(self, name: str, query: JSON, body: JSON) -> JSON:
        if name not in self._rings:
            raise StatusError("NOT_FOUND", f"{name} not found.")
        return {"name": name, "createTime": _timestamp(self._rings[name])}

    def _create_crypto_key(self, parent: str, query: JSON, body: JSON) -> JSON:
        key_id = query.get("cryptoKeyId") or ""
        if parent not in self._rings:
            raise StatusError("NOT_FOUND", f"{parent} not found.")
        if not key_id:
            raise StatusError("INVALID_ARGUMENT", "crypto_key_id is required.")
        purpose = _enum_name("purpose", body.get("purpose", 0))
        template = body.get("versionTemplate") or {}
        algorithm = _enum_name("algorithm", template.get("algorithm", 0))
        unspecified = "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED"
        if purpose == "ENCRYPT_DECRYPT" and algorithm in (
            "GOOGLE_SYMMETRIC_ENCRYPTION",
            unspecified,
        ):
            algorithm = "GOOGLE_SYMMETRIC_ENCRYPTION"
        elif purpose != "ASYMMETRIC_SIGN" or algorithm not in SIGNING:
            raise StatusError(
                "INVALID_ARGUMENT",
                "This fake supports ENCRYPT_DECRYPT keys, and ASYMMETRIC_SIGN keys of "
                f"{' or '.join(SIGNING)}.",
            )
        elif body.get("rotationPeriod"):
            raise StatusError(
                "INVALID_ARGUMENT", "Rotation period can only be set for symmetric keys."
            )
        name = f"{parent}/cryptoKeys/{key_id}"
        if name in self._keys:
            raise StatusError("ALREADY_EXISTS", f"{name} already exists.")
        key = _Key(
            name, self._clock(), purpose, algorithm, rotation_period=body.get("rotationPeriod")
        )
        if str(query.get("skipInitialVersionCreation", "false")).lower() != "true":
            number = self._add_version(key, "ENABLED").number
            if purpose == "ENCRYPT_DECRYPT":  # an asymmetric key has no primary version
                key.primary = key.served_primary = number
        self._keys[name] = key
        return self._key_json(key)

    def _get_crypto_key(self, name: str, query: JSON, body: JSON) -> JSON:
        return self._key_json(self._key(name))

    def _create_crypto_key_version(self, parent: str, query: JSON, body: JSON) -> JSON:
        key = self._key(parent)
        state = "PENDING_GENERATION" if self.pending_generation else "ENABLED"
        return self._version_json(key, self._add_version(key, state))

    def _get_crypto_key_version(self, name: str, query: JSON, body: JSON) -> JSON:
        key, version = self._version(name)
        document = self._version_json(key, version)
        if version.state == "PENDING_GENERATION":
            # Generation finishes after the first look (no propagation: nothing used it yet).
            version.state = version.served_state = "ENABLED"
        return document

    def _list_crypto_key_versions(self, parent: str, query: JSON, body: JSON) -> JSON:
        key = self._key(parent)
        size = int(query.get("pageSize") or 2)  # small pages so the client's pager is exercised
        start = int(query.get("pageToken") or 0)
        numbers = sorted(key.versions)
        page = numbers[start : start + size]
        document: JSON = {
            "cryptoKeyVersions": [self._version_json(key, key.versions[n]) for n in page],
            "totalSize": len(numbers),
        }
        if start + size < len(numbers):
            document["nextPageToken"] = str(start + size)
        return document

    def _update_crypto_key_version(self, name: str, query: JSON, body: JSON) -> JSON:
        key, version = self._version(name)
        mask = [p.strip() for p in str(query.get("updateMask") or "").split(",") if p.strip()]
        if mask != ["state"]:
            raise StatusError("INVALID_ARGUMENT", "This fake updates only the field mask 'state'.")
        wanted = _enum_name("state", body.get("state"))
        allowed = {("ENABLED", "DISABLED"), ("DISABLED", "ENABLED")}
        if wanted != version.state and (version.state, wanted) not in allowed:
            raise StatusError(
                "FAILED_PRECONDITION",
                f"{name} is in state {version.state} and cannot be changed to {wanted}.",
            )
        self._set_state(version, wanted)
        return self._version_json(key, version)

    def _update_crypto_key_primary_version(self, name: str, query: JSON, body: JSON) -> JSON:
        key = self._key(name)
        number = str(body.get("cryptoKeyVersionId") or "")
        version = key.versions.get(int(number)) if number.isdigit() else None
        if version is None:
            raise StatusError("NOT_FOUND", f"{name}/cryptoKeyVersions/{number} not found.")
        if version.state != "ENABLED":
            raise StatusError(
                "FAILED_PRECONDITION",
                f"{name}/cryptoKeyVersions/{number} is not enabled, current state is: "
                f"{version.state}.",
            )
        self._set_primary(key, version.number)
        return self._key_json(key)

    # -- cryptography -------------------------------------------------------------------------

    @staticmethod
    def _gcm_aad(key: _Key, aad: bytes) -> bytes:
        name = key.name.encode()
        return struct.pack(">I", len(name)) + name + aad

    def _encrypt(self, name: str, query: JSON, body: JSON) -> JSON:
        if "/cryptoKeyVersions/" in name:
            key, version = self._version(name)
        else:
            key = self._key(name)
            primary = key.effective_primary(
                self._seconds(), self.propagation_delay, self.mixed_propagation
            )
            if primary is None:
                raise StatusError("FAILED_PRECONDITION", f"{name} has no primary version.")
            version = key.versions[primary]
        plaintext = _unb64(body, "plaintext")
        aad = _unb64(body, "additionalAuthenticatedData")
        if len(plaintext) > MAX_PLAINTEXT or len(aad) > MAX_PLAINTEXT:
            raise StatusError("INVALID_ARGUMENT", "The plaintext or AAD is larger than 64 KiB.")
        verified_plaintext = _check_crc(body, plaintext, "plaintext", "plaintextCrc32c")
        verified_aad = _check_crc(
            body, aad, "additional_authenticated_data", "additionalAuthenticatedDataCrc32c"
        )
        version_name = f"{key.name}/cryptoKeyVersions/{version.number}"
        state = version.effective(self._seconds(), self.propagation_delay)
        if state != "ENABLED":
            raise StatusError(
                "FAILED_PRECONDITION",
                f"{version_name} is not enabled, current state is: {state}.",
            )
        nonce = os.urandom(12)
        cipher = AES.new(version.secret, AES.MODE_GCM, nonce=nonce)
        cipher.update(self._gcm_aad(key, aad))
        body_bytes, tag = cipher.encrypt_and_digest(plaintext)
        ciphertext = MAGIC + struct.pack(">I", version.number) + nonce + body_bytes + tag
        crc = crc32c(ciphertext)
        if self._matching(self._unverified, key.name):
            verified_plaintext = verified_aad = False
        return {
            "name": version_name,
            "ciphertext": _b64(self._maybe_corrupt(key.name, ciphertext)),
            "ciphertextCrc32c": str(crc),
            "verifiedPlaintextCrc32c": verified_plaintext,
            "verifiedAdditionalAuthenticatedDataCrc32c": verified_aad,
            "protectionLevel": "SOFTWARE",
        }

    def _decrypt(self, name: str, query: JSON, body: JSON) -> JSON:
        key = self._key(name)
        ciphertext = _unb64(body, "ciphertext")
        aad = _unb64(body, "additionalAuthenticatedData")
        _check_crc(body, ciphertext, "ciphertext", "ciphertextCrc32c")
        _check_crc(body, aad, "additional_authenticated_data", "additionalAuthenticatedDataCrc32c")
        invalid = StatusError("INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
        if len(ciphertext) < HEADER + 16 or not ciphertext.startswith(MAGIC):
            raise invalid
        (number,) = struct.unpack(">I", ciphertext[len(MAGIC) : len(MAGIC) + 4])
        version = key.versions.get(number)
        if version is None:
            raise invalid
        state = version.effective(self._seconds(), self.propagation_delay)
        if state != "ENABLED":
            raise StatusError(
                "FAILED_PRECONDITION",
                f"{name}/cryptoKeyVersions/{number} is not enabled, current state is: {state}.",
            )
        nonce = ciphertext[len(MAGIC) + 4 : HEADER]
        cipher = AES.new(version.secret, AES.MODE_GCM, nonce=nonce)
        cipher.update(self._gcm_aad(key, aad))
        try:
            plaintext = cipher.decrypt_and_verify(ciphertext[HEADER:-16], ciphertext[-16:])
        except ValueError:
            raise invalid from None
        return {
            "plaintext": _b64(self._maybe_corrupt(key.name, plaintext)),
            "plaintextCrc32c": str(crc32c(plaintext)),
            "usedPrimary": number == key.effective_primary(self._seconds(), self.propagation_delay),
            "protectionLevel": "SOFTWARE",
        }

    def _signing_version(self, name: str) -> tuple[_Key, _Version, SigningKey]:
        key, version = self._version(name)
        if version.signing is None:
            raise StatusError(
                "FAILED_PRECONDITION",
                f"{key.name} has purpose {key.purpose}, not ASYMMETRIC_SIGN.",
            )
        return key, version, version.signing

    def _asymmetric_sign(self, name: str, query: JSON, body: JSON) -> JSON:
        """``asymmetricSign``: a SHA-256 ``digest`` for EC_SIGN_P256_SHA256 (a DER signature),
        the ``data`` itself for EC_SIGN_ED25519; a version that is not ENABLED refuses."""
        key, version, signing = self._signing_version(name)
        if version.effective(self._seconds(), self.propagation_delay) != "ENABLED":
            raise StatusError(
                "FAILED_PRECONDITION", f"{name} is not enabled, current state is: {version.state}."
            )
        verified_digest = verified_data = False
        if signing.curve is Curve.P256:
            digest = body.get("digest") or {}
            if "data" in body or set(digest) != {"sha256"}:
                raise StatusError(
                    "INVALID_ARGUMENT", f"{key.algorithm} signs a digest.sha256, and no data."
                )
            value = _unb64(digest, "sha256")
            if len(value) != 32:
                raise StatusError("INVALID_ARGUMENT", "The digest must be 32 bytes (SHA-256).")
            verified_digest = _check_crc(body, value, "digest", "digestCrc32c")
            signature = signing.sign_digest(value, Encoding.DER)
        else:
            if "digest" in body:
                raise StatusError("INVALID_ARGUMENT", f"{key.algorithm} signs data, no digest.")
            value = _unb64(body, "data")
            verified_data = _check_crc(body, value, "data", "dataCrc32c")
            signature = signing.sign_data(value)
        return {
            "signature": _b64(self._maybe_corrupt(key.name, signature)),
            "signatureCrc32c": str(crc32c(signature)),
            "verifiedDigestCrc32c": verified_digest,
            "verifiedDataCrc32c": verified_data,
            "name": name,
            "protectionLevel": "SOFTWARE",
        }

    def _get_public_key(self, name: str, query: JSON, body: JSON) -> JSON:
        """``getPublicKey``: the version's public key as PEM (SubjectPublicKeyInfo)."""
        key, _, signing = self._signing_version(name)
        pem = signing.public_pem()
        return {
            "pem": pem,
            "pemCrc32c": str(crc32c(pem.encode())),
            "algorithm": key.algorithm,
            "name": name,
            "protectionLevel": "SOFTWARE",
        }

    def _maybe_corrupt(self, resource: str, data: bytes) -> bytes:
        prefix = self._matching(set(self._corrupt), resource)
        if prefix is None or self._corrupt[prefix] <= 0 or not data:
            return data
        self._corrupt[prefix] -= 1
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        return bytes(flipped)


def _enum_name(kind: str, value: object) -> str:
    for name, number in ENUMS[kind].items():
        if value in (name, number):
            return name
    raise StatusError("INVALID_ARGUMENT", f"Invalid value for enum field {kind}: {value!r}")


def _numeric_enums(document: object) -> object:
    if isinstance(document, dict):
        return {
            k: ENUMS[k].get(v, v) if k in ENUMS and isinstance(v, str) else _numeric_enums(v)
            for k, v in document.items()
        }
    if isinstance(document, list):
        return [_numeric_enums(item) for item in document]
    return document


# -- REST ---------------------------------------------------------------------------------------

# (HTTP method, kind of the path, verb) -> operation; the kind is the last collection in the
# path, singular when an id follows it.
_REST_ROUTES = {
    ("POST", "keyRings", ""): "create_key_ring",
    ("GET", "keyRing", ""): "get_key_ring",
    ("POST", "cryptoKeys", ""): "create_crypto_key",
    ("GET", "cryptoKey", ""): "get_crypto_key",
    ("POST", "cryptoKey", "encrypt"): "encrypt",
    ("POST", "cryptoKeyVersion", "encrypt"): "encrypt",
    ("POST", "cryptoKey", "decrypt"): "decrypt",
    ("POST", "cryptoKey", "updatePrimaryVersion"): "update_crypto_key_primary_version",
    ("POST", "cryptoKeyVersions", ""): "create_crypto_key_version",
    ("GET", "cryptoKeyVersions", ""): "list_crypto_key_versions",
    ("GET", "cryptoKeyVersion", ""): "get_crypto_key_version",
    ("PATCH", "cryptoKeyVersion", ""): "update_crypto_key_version",
    ("POST", "cryptoKeyVersion", "asymmetricSign"): "asymmetric_sign",
    ("GET", "publicKey", ""): "get_public_key",
}


def _route(method: str, path: str) -> tuple[str, str]:
    if not path.startswith("/v1/"):
        raise StatusError("NOT_FOUND", f"No such path {path}.")
    resource, _, verb = unquote(path[len("/v1/") :]).partition(":")
    segments = resource.split("/")
    if len(segments) < 3 or segments[0] != "projects" or segments[2] != "locations":
        raise StatusError("NOT_FOUND", f"No such path {path}.")
    # A collection (odd length) or a singleton such as .../cryptoKeyVersions/1/publicKey.
    kind = segments[-1] if len(segments) % 2 else segments[-2].removesuffix("s")
    operation = _REST_ROUTES.get((method, kind, verb))
    if operation is None:
        raise StatusError("UNIMPLEMENTED", f"{method} {path} is not implemented by this fake.")
    return operation, resource.removesuffix("/" + kind) if len(segments) % 2 else resource


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        numeric = "enum-encoding=int" in query.get("$alt", "")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            operation, resource = _route(method, parts.path)
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise StatusError("INVALID_ARGUMENT", "The request body must be a JSON object.")
            authorization = self.headers.get("Authorization")
            answer: object = self.server.kms.call(operation, resource, query, body, authorization)
            status = 200
        except StatusError as fault:
            status = HTTP_STATUS[fault.status]
            answer = fault.rest_error()
        except json.JSONDecodeError:
            status = 400
            answer = {
                "error": {"code": 400, "message": "Invalid JSON.", "status": "INVALID_ARGUMENT"}
            }
        if numeric and status == 200:
            answer = _numeric_enums(answer)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    kms: FakeKMS


# -- gRPC ---------------------------------------------------------------------------------------

# RPC name -> (operation, request field holding the resource, query fields, body field).
_GRPC_ROUTES: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "CreateKeyRing": ("create_key_ring", "parent", ("keyRingId",), "keyRing"),
    "GetKeyRing": ("get_key_ring", "name", (), None),
    "CreateCryptoKey": (
        "create_crypto_key",
        "parent",
        ("cryptoKeyId", "skipInitialVersionCreation"),
        "cryptoKey",
    ),
    "GetCryptoKey": ("get_crypto_key", "name", (), None),
    "Encrypt": ("encrypt", "name", (), "*"),
    "Decrypt": ("decrypt", "name", (), "*"),
    "UpdateCryptoKeyPrimaryVersion": ("update_crypto_key_primary_version", "name", (), "*"),
    "CreateCryptoKeyVersion": ("create_crypto_key_version", "parent", (), "cryptoKeyVersion"),
    "ListCryptoKeyVersions": (
        "list_crypto_key_versions",
        "parent",
        ("pageSize", "pageToken"),
        None,
    ),
    "GetCryptoKeyVersion": ("get_crypto_key_version", "name", (), None),
    "AsymmetricSign": ("asymmetric_sign", "name", (), "*"),
    "GetPublicKey": ("get_public_key", "name", (), None),
    "UpdateCryptoKeyVersion": (
        "update_crypto_key_version",
        "cryptoKeyVersion.name",
        ("updateMask",),
        "cryptoKeyVersion",
    ),
}


def _grpc_handler(kms: FakeKMS) -> Any:
    import grpc
    from google.cloud.kms_v1.types import resources, service
    from google.protobuf import json_format

    messages = {
        "CreateKeyRing": (service.CreateKeyRingRequest, resources.KeyRing),
        "GetKeyRing": (service.GetKeyRingRequest, resources.KeyRing),
        "CreateCryptoKey": (service.CreateCryptoKeyRequest, resources.CryptoKey),
        "GetCryptoKey": (service.GetCryptoKeyRequest, resources.CryptoKey),
        "Encrypt": (service.EncryptRequest, service.EncryptResponse),
        "Decrypt": (service.DecryptRequest, service.DecryptResponse),
        "UpdateCryptoKeyPrimaryVersion": (
            service.UpdateCryptoKeyPrimaryVersionRequest,
            resources.CryptoKey,
        ),
        "CreateCryptoKeyVersion": (
            service.CreateCryptoKeyVersionRequest,
            resources.CryptoKeyVersion,
        ),
        "ListCryptoKeyVersions": (
            service.ListCryptoKeyVersionsRequest,
            service.ListCryptoKeyVersionsResponse,
        ),
        "GetCryptoKeyVersion": (service.GetCryptoKeyVersionRequest, resources.CryptoKeyVersion),
        "AsymmetricSign": (service.AsymmetricSignRequest, service.AsymmetricSignResponse),
        "GetPublicKey": (service.GetPublicKeyRequest, resources.PublicKey),
        "UpdateCryptoKeyVersion": (
            service.UpdateCryptoKeyVersionRequest,
            resources.CryptoKeyVersion,
        ),
    }

    def method(rpc: str) -> Any:
        request_type, response_type = messages[rpc]
        operation, resource_field, query_fields, body_field = _GRPC_ROUTES[rpc]

        def serve(request: Any, context: Any) -> Any:
            document = json_format.MessageToDict(request)
            resource: Any = document
            for part in resource_field.split("."):
                resource = resource.get(part, "") if isinstance(resource, dict) else ""
            query = {k: str(document[k]) for k in query_fields if k in document}
            if body_field == "*":
                body = document
            else:
                body = document.get(body_field, {}) if body_field else {}
            metadata = dict(context.invocation_metadata())
            try:
                answer = kms.call(
                    operation, str(resource), query, body, metadata.get("authorization")
                )
            except StatusError as fault:
                if fault.retry_delay is not None:
                    context.abort_with_status(_grpc_status(fault))
                context.abort(getattr(grpc.StatusCode, fault.status), fault.message)
            message = response_type.pb()()
            json_format.ParseDict(answer, message, ignore_unknown_fields=True)
            return message

        return grpc.unary_unary_rpc_method_handler(
            serve,
            request_deserializer=request_type.pb().FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )

    return grpc.method_handlers_generic_handler(
        "google.cloud.kms.v1.KeyManagementService", {rpc: method(rpc) for rpc in messages}
    )


def _grpc_status(fault: StatusError) -> Any:
    """A gRPC status with the rich ``google.rpc.Status`` (and its RetryInfo) in the trailers."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int((fault.retry_delay or 0) * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(
        code=code_pb2.Code.Value(fault.status), message=fault.message, details=[detail]
    )
    return rpc_status.to_status(status)


# -- servers ------------------------------------------------------------------------------------


@dataclass
class FakeKMSServer:
    """A running fake: ``url`` for REST (``http://127.0.0.1:PORT``), ``grpc_target`` for gRPC."""

    kms: FakeKMS
    url: str
    grpc_target: str | None
    _http: _HTTPServer
    _grpc: Any
    _thread: threading.Thread

    @property
    def grpc_url(self) -> str:
        """The gRPC endpoint as heimdall-kms takes it: ``http://`` means plaintext (tests)."""
        assert self.grpc_target is not None
        return f"http://{self.grpc_target}"

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
        if self._grpc is not None:
            self._grpc.stop(grace=None)


def start_fake_kms(*, grpc: bool = False, kms: FakeKMS | None = None) -> FakeKMSServer:
    """Start the REST server (and the gRPC one) on free loopback ports."""
    state = kms or FakeKMS()
    http = _HTTPServer(("127.0.0.1", 0), _Handler)
    http.kms = state
    thread = threading.Thread(target=http.serve_forever, name="fake-gcp-kms", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{http.server_address[1]}"
    grpc_server = None
    target = None
    if grpc:
        import grpc as grpc_module

        grpc_server = grpc_module.server(futures.ThreadPoolExecutor(max_workers=16))
        grpc_server.add_generic_rpc_handlers((_grpc_handler(state),))
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        grpc_server.start()
        target = f"127.0.0.1:{port}"
    return FakeKMSServer(state, url, target, http, grpc_server, thread)
