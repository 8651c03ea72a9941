"""JWT/OIDC and TLS-certificate auth against a real OpenBao (``HMD_VAULT_AUTH_METHOD``).

The JWT is signed here with a key ``openssl`` makes (tests may not import ``cryptography``);
OpenBao checks it against the public key given to ``auth/jwt/config``. Certificate auth needs
a TLS listener: ``bao server -dev-tls`` with its own CA, and a client CA made by trustme.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.errors import AuthenticationError, ConfigurationError
from tests.servers import TRANSIT_KEY, OpenBao, start_openbao

pytestmark = pytest.mark.vault

SSN = "123-45-6789"
CTX = {"table": "customers", "field": "ssn", "record": "r1"}
POLICY = (
    f'path "transit/encrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n'
    f'path "transit/decrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n'
    f'path "transit/keys/{TRANSIT_KEY}" {{ capabilities = ["read"] }}\n'
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Signer:
    """An RS256 key pair from openssl, and JWTs signed with it."""

    def __init__(self, folder: Path) -> None:
        self.private = folder / "signer.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(self.private)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.public_pem = subprocess.run(
            ["openssl", "pkey", "-in", str(self.private), "-pubout"],
            check=True, capture_output=True,
        ).stdout.decode("ascii")  # fmt: skip

    def jwt(self, **claims: object) -> str:
        now = int(time.time())
        body = {"iss": "https://ci.example", "sub": "deploy-1", "aud": "heimdall-kms"}
        body |= {"iat": now, "nbf": now - 5, "exp": now + 600, **claims}
        header = {"alg": "RS256", "typ": "JWT"}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(body).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.private)],
            input=signing_input.encode("ascii"), check=True, capture_output=True,
        ).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"


def _write_private(path: Path, content: str | bytes) -> Path:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class JWTServer:
    """A server with JWT auth on, and the signer of the JWTs it trusts."""

    server: OpenBao
    signer: Signer


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JWTServer]:
    server = start_openbao()
    signer = Signer(tmp_path_factory.mktemp("jwt"))
    root = server.client()
    root.sys.create_or_update_policy("heimdall-app", POLICY)
    root.sys.enable_auth_method("jwt", path="ci-jwt")
    root.auth.jwt.configure(jwt_validation_pubkeys=[signer.public_pem], path="ci-jwt")
    root.auth.jwt.create_role(
        "heimdall-app",
        role_type="jwt",
        allowed_redirect_uris=[],
        user_claim="sub",
        bound_audiences=["heimdall-kms"],
        bound_subject="deploy-1",
        token_policies=["heimdall-app"],
        token_ttl="10m",
        path="ci-jwt",
    )
    yield JWTServer(server, signer)
    server.stop()


class TestJWTAuth:
    def _env(self, server: OpenBao, jwt_file: Path) -> dict[str, str]:
        return server.env(
            HMD_VAULT_TOKEN="",
            HMD_VAULT_AUTH_METHOD="jwt",
            HMD_VAULT_JWT_ROLE="heimdall-app",
            HMD_VAULT_JWT_FILE=str(jwt_file),
            HMD_VAULT_AUTH_MOUNT="ci-jwt",
        )

    def test_login_with_a_signed_jwt_then_encrypt_and_decrypt(
        self, jwt_server: JWTServer, tmp_path: Path
    ) -> None:
        server = jwt_server.server
        signer = jwt_server.signer
        jwt_file = _write_private(tmp_path / "jwt", signer.jwt() + "\n")
        with heimdall_kms.from_env(self._env(server, jwt_file), audit=MemoryAuditSink()) as c:
            envelope = c.encrypt(SSN, context=CTX)
            assert c.decrypt(envelope, actor="a", reason="r") == SSN

    def test_a_revoked_token_is_replaced_by_a_login_with_the_files_current_jwt(
        self, jwt_server: JWTServer, tmp_path: Path
    ) -> None:
        server = jwt_server.server
        signer = jwt_server.signer
        jwt_file = _write_private(tmp_path / "jwt", signer.jwt())
        with heimdall_kms.from_env(self._env(server, jwt_file), audit=MemoryAuditSink()) as c:
            envelope = c.encrypt(SSN, context=CTX)
            # The workload's token rotates: a new JWT in the file, the old one no longer valid.
            _write_private(jwt_file, signer.jwt(jti="second"))
            root = server.client()
            revoked = 0
            for accessor in root.list("auth/token/accessors")["data"]["keys"]:
                data = root.auth.token.lookup_accessor(accessor)["data"]
                if data["path"] == "auth/ci-jwt/login":
                    root.auth.token.revoke_accessor(accessor)
                    revoked += 1
            assert revoked >= 1
            assert c.decrypt(envelope, actor="a", reason="r") == SSN

    @pytest.mark.parametrize(
        "claims", [{"sub": "someone-else"}, {"aud": "another-app"}, {"exp": 1_000_000_000}]
    )
    def test_a_jwt_the_role_does_not_accept_is_refused(
        self, jwt_server: JWTServer, tmp_path: Path, claims: dict[str, object]
    ) -> None:
        server = jwt_server.server
        signer = jwt_server.signer
        token = signer.jwt(**claims)
        jwt_file = _write_private(tmp_path / "jwt", token)
        with pytest.raises(AuthenticationError) as caught:
            heimdall_kms.from_env(self._env(server, jwt_file), audit=MemoryAuditSink())
        assert token[-20:] not in str(caught.value)

    def test_a_jwt_signed_by_another_key_is_refused(
        self, jwt_server: JWTServer, tmp_path: Path
    ) -> None:
        server = jwt_server.server
        jwt_file = _write_private(tmp_path / "jwt", Signer(tmp_path).jwt())
        with pytest.raises(AuthenticationError):
            heimdall_kms.from_env(self._env(server, jwt_file), audit=MemoryAuditSink())

    def test_a_jwt_file_others_may_read_is_refused_at_start(
        self, jwt_server: JWTServer, tmp_path: Path
    ) -> None:
        server = jwt_server.server
        signer = jwt_server.signer
        jwt_file = _write_private(tmp_path / "jwt", signer.jwt())
        jwt_file.chmod(0o644)
        with pytest.raises(ConfigurationError, match=r"^HMD_VAULT_JWT_FILE: "):
            heimdall_kms.from_env(self._env(server, jwt_file), audit=MemoryAuditSink())


class TestCertAuth:
    def test_login_with_a_client_certificate_then_encrypt_and_decrypt(self, tmp_path: Path) -> None:
        server = start_openbao(tls=True)
        try:
            client_ca = trustme.CA()
            issued = client_ca.issue_cert("heimdall-app.example", common_name="heimdall-app")
            cert = _write_private(tmp_path / "client.pem", issued.cert_chain_pems[0].bytes())
            key = _write_private(tmp_path / "client.key", issued.private_key_pem.bytes())
            root = server.client()
            root.sys.create_or_update_policy("heimdall-app", POLICY)
            root.sys.enable_auth_method("cert")
            root.auth.cert.create_ca_certificate_role(
                "heimdall-app",
                certificate=client_ca.cert_pem.bytes().decode("ascii"),
                token_policies=["heimdall-app"],
                token_ttl="10m",
            )
            env = server.env(
                HMD_VAULT_TOKEN="",
                HMD_VAULT_AUTH_METHOD="cert",
                HMD_VAULT_CLIENT_CERT=str(cert),
                HMD_VAULT_CLIENT_KEY=str(key),
                HMD_VAULT_CERT_ROLE="heimdall-app",
            )
            with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
                assert c.decrypt(c.encrypt(SSN, context=CTX), actor="a", reason="r") == SSN
            # A certificate from a CA the role does not trust is refused by Vault.
            stranger = trustme.CA().issue_cert("heimdall-app.example", common_name="heimdall-app")
            _write_private(cert, stranger.cert_chain_pems[0].bytes())
            _write_private(key, stranger.private_key_pem.bytes())
            with pytest.raises(AuthenticationError):
                heimdall_kms.from_env(env, audit=MemoryAuditSink())
        finally:
            server.stop()
