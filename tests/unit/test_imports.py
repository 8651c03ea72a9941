"""Importing the package loads no provider SDK (nor OpenTelemetry), and only primitives.py imports
`cryptography`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "heimdall_kms"


def test_import_loads_no_provider_sdk() -> None:
    code = (
        "import sys, heimdall_kms, heimdall_kms.cli\n"
        "heavy = [m for m in ('hvac', 'boto3', 'botocore', 'google.cloud.kms', 'azure',"
        " 'opentelemetry')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_only_the_primitives_module_imports_cryptography() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "cryptography" or n.startswith("cryptography.") for n in names):
                offenders.append(path.name)
    assert sorted(set(offenders)) == ["primitives.py"]


def test_sqlalchemy_integration_without_the_extra_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    import heimdall_kms.sqlalchemy\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "ImportError heimdall_kms.sqlalchemy needs SQLAlchemy 2:"
        " pip install 'heimdall-kms[sqlalchemy]'"
    )


def test_signing_checkpoints_without_the_providers_extra_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['boto3'] = None  # as if the aws extra were not installed\n"
        "from heimdall_kms.config import Settings\n"
        "from heimdall_kms.audit.signers import signer_from_settings\n"
        "settings = Settings.from_env({'HMD_KMS_PROVIDER': 'aws', 'HMD_KMS_KEY_ID': 'alias/pii',"
        " 'HMD_AWS_REGION': 'eu-west-1', 'HMD_AUDIT_SIGNING_KEY': 'alias/pii-audit'})\n"
        "try:\n"
        "    signer_from_settings(settings)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "ConfigurationError HMD_AUDIT_SIGNING_KEY needs: pip install 'heimdall-kms[aws]'"
    )
