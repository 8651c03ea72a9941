"""The deployment examples in deploy/: manifests that parse and hang together, and every
`heimdall-kms ...` command line in deploy/ and docs/rotation.md is a real command.

Command lines are taken from where they are commands: Kubernetes container ``args`` (the
image's entrypoint is ``heimdall-kms``), systemd ``Exec*`` lines, the Dockerfile's
``ENTRYPOINT``/``CMD``, and code (fenced blocks and backticked spans) in Markdown and comments.
Each is resolved against the click command tree (subcommand path, option names, choices), and
``heimdall-kms <path> --help`` is run once per subcommand path found.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from heimdall_kms.cli import cli
from heimdall_kms.errors import ConfigurationError, IncompleteError, InvalidInputError, StoreError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "Deployment",
    "Service",
    "CronJob",
    "Job",
    "Kustomization",
}
# Applied on purpose, never by `kubectl apply -k`: example Secrets, the one-off migration Job.
ON_DEMAND = {"secret.example.yaml", "job-migrate.yaml"}
# Exit codes a rerun cannot change (docs/cli.md): a bad option, values failed, a bad argument,
# the store (wrong table/column), a setting. Retrying them only repeats the failure.
FINAL_EXIT_CODES = {
    2,
    IncompleteError.exit_code,
    InvalidInputError.exit_code,
    StoreError.exit_code,
    ConfigurationError.exit_code,
}
# A command starts a line (after an optional "$ "), or follows a path's /bin/, "; ", "&& ",
# "-- " or "(": so that prose such as "Description=Daily heimdall-kms rotation check" is not one.
_COMMAND = re.compile(
    r"(?:^\s*(?:\$\s+)?|(?<=/bin/)|(?<=; )|(?<=&& )|(?<=-- )|(?<=\())"
    r"heimdall-kms(?=\s)(?P<rest>[^`;|&#)]*)"
)
_ARGS = re.compile(r"args:\s*(\[[^\]]*\])")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                found.append((path, doc))
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def names(kind: str) -> set[str]:
    return {doc["metadata"]["name"] for doc in by_kind(kind)}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in by_kind("Deployment"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    for doc in by_kind("CronJob"):
        yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for doc in by_kind("Job"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


# -- manifests -------------------------------------------------------------------------------------


def test_every_manifest_parses_and_has_the_required_fields() -> None:
    assert MANIFESTS, "no manifests in deploy/kubernetes"
    seen = set()
    for path, doc in documents():
        assert {"apiVersion", "kind"} <= doc.keys(), path.name
        assert doc["kind"] in KINDS, (path.name, doc["kind"])
        seen.add(doc["kind"])
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path.name
            assert doc["metadata"]["namespace"] == "heimdall", path.name
    assert seen == KINDS


def test_the_kustomization_lists_existing_files_and_leaves_out_the_example_secrets() -> None:
    (kustomization,) = by_kind("Kustomization")
    resources = kustomization["resources"]
    assert all((DEPLOY / "kubernetes" / name).is_file() for name in resources)
    assert not ON_DEMAND & set(resources)
    assert set(resources) | ON_DEMAND | {"kustomization.yaml"} == {p.name for p in MANIFESTS}


def test_pods_reference_what_exists_and_run_locked_down() -> None:
    accounts, config_maps, secrets = names("ServiceAccount"), names("ConfigMap"), names("Secret")
    for name, spec in pod_specs():
        assert spec["serviceAccountName"] in accounts, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, name
        for container in spec["containers"]:
            assert container["name"] and container["image"], name
            assert container["args"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount["name"])
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            # Each workload logs in to Vault as the role bound to its own service account.
            assert env["HMD_VAULT_K8S_ROLE"] == spec["serviceAccountName"], name


def test_every_read_only_pod_has_a_writable_tmp() -> None:
    # Python's tempfile (and the rotation lock file's default) needs one: without it a
    # container with a read-only root fails with "No usable temporary directory".
    for name, spec in pod_specs():
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            if not container["securityContext"].get("readOnlyRootFilesystem"):
                continue
            mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(mounts) == 1, (name, container["name"])
            (tmp,) = mounts
            assert not tmp.get("readOnly"), (name, container["name"])
            assert "emptyDir" in volumes[tmp["name"]], (name, container["name"])


def test_the_rotation_cronjob_takes_the_postgresql_lock() -> None:
    # A lock file in one pod's /tmp serialises nothing across pods; the advisory lock on the
    # database does (docs/rotation.md).
    secrets = {d["metadata"]["name"]: d for d in by_kind("Secret")}
    (rotate,) = [d for d in by_kind("CronJob") if d["metadata"]["name"] == "heimdall-kms-rotate"]
    (container,) = rotate["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    urls = [
        secrets[source["secretRef"]["name"]]["stringData"].get("HMD_DATABASE_URL", "")
        for source in container["envFrom"]
        if "secretRef" in source
    ]
    assert any(url.startswith(("postgresql://", "postgres://")) for url in urls), urls


def test_no_vault_credential_is_in_any_manifest() -> None:
    for path, doc in documents():
        for section in ("data", "stringData"):
            keys = set(doc.get(section) or {})
            assert not keys & {"HMD_VAULT_TOKEN", "HMD_VAULT_SECRET_ID", "VAULT_TOKEN"}, path.name


def test_the_service_selects_the_deployment_and_its_port() -> None:
    (deployment,) = by_kind("Deployment")
    (service,) = by_kind("Service")
    template = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    port_names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    probe = template["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["scheme"] == "HTTPS"


def test_cronjobs_are_daily_and_never_overlap() -> None:
    jobs = {doc["metadata"]["name"]: doc for doc in by_kind("CronJob")}
    assert set(jobs) == {"heimdall-kms-rotate", "heimdall-kms-reencrypt"}
    for name, job in jobs.items():
        fields = job["spec"]["schedule"].split()
        assert len(fields) == 5 and fields[2:] == ["*", "*", "*"], name
        assert job["spec"]["concurrencyPolicy"] == "Forbid", name
        template = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert template["restartPolicy"] in ("Never", "OnFailure"), name
        assert template["serviceAccountName"] == "heimdall-kms-admin", name
    (rotate,) = jobs["heimdall-kms-rotate"]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert rotate["args"][:2] == ["rotate", "--if-due"]


class TestMigrationWorkers:
    """N workers on one target: an Indexed Job and a systemd template unit (docs/performance.md)."""

    def test_the_job_is_indexed_and_runs_n_migrate_workers(self) -> None:
        (job,) = by_kind("Job")
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["parallelism"] == spec["completions"] >= 2
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["serviceAccountName"] == "heimdall-kms-app"  # migration encrypts
        (container,) = pod["containers"]
        args = container["args"]
        path, command, _ = resolve(args)
        assert path == ["migrate"] and command.name == "migrate"
        # Each worker journals under its own run id, from the index Kubernetes sets.
        assert args[args.index("--run-id") + 1] == "migrate-w$(JOB_COMPLETION_INDEX)"
        assert "--dry-run" not in args and "--estimate" not in args
        env = {e["name"]: e for e in container["env"]}
        assert env["HMD_ENCRYPTION_MODE"]["value"] == "hybrid"  # reads the env key, writes kms_v1
        index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {
            "heimdall-kms-settings",
            "heimdall-kms-database",
            "heimdall-kms-legacy-key",
        }
        (legacy,) = [
            d for d in by_kind("Secret") if d["metadata"]["name"] == "heimdall-kms-legacy-key"
        ]
        assert set(legacy["stringData"]) == {"HMD_PII_MASTER_KEY"}

    def test_each_job_worker_pushes_its_own_metrics_group(self) -> None:
        # A push replaces its group: N workers under one --metrics-job keep only the last.
        (job,) = by_kind("Job")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert (
            args[args.index("--metrics-job") + 1] == "heimdall-kms-migrate-w$(JOB_COMPLETION_INDEX)"
        )
        # $(VAR) in args expands only a variable declared in the container's env.
        assert "JOB_COMPLETION_INDEX" in {e["name"] for e in container["env"]}

    def test_a_final_exit_code_fails_its_index_without_retries(self) -> None:
        (job,) = by_kind("Job")
        spec = job["spec"]
        assert spec["backoffLimitPerIndex"] >= 1  # FailIndex needs per-index backoff
        (container,) = spec["template"]["spec"]["containers"]
        (rule,) = spec["podFailurePolicy"]["rules"]
        assert rule["action"] == "FailIndex"
        codes = rule["onExitCodes"]
        assert codes["containerName"] == container["name"]
        assert codes["operator"] == "In" and set(codes["values"]) == FINAL_EXIT_CODES

    def test_the_systemd_template_runs_one_worker_per_instance(self) -> None:
        unit = DEPLOY / "systemd" / "heimdall-kms-migrate@.service"
        lines = unit.read_text(encoding="utf-8").splitlines()
        (start,) = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
        tokens = shlex.split(start)
        assert tokens[0].endswith("/bin/heimdall-kms")
        path, command, rest = resolve(tokens[1:])
        assert path == ["migrate"]
        check_options(command, rest)
        assert rest[rest.index("--run-id") + 1] == "migrate-w%i"
        assert rest[rest.index("--metrics-job") + 1] == "heimdall-kms-migrate-w%i"
        assert "Type=exec" in lines and "Restart=on-failure" in lines
        assert any(line.startswith("EnvironmentFile=") for line in lines)
        (prevent,) = [line for line in lines if line.startswith("RestartPreventExitStatus=")]
        assert {int(code) for code in prevent.split("=", 1)[1].split()} == FINAL_EXIT_CODES


def test_every_environment_file_a_unit_reads_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    example = (DEPLOY / "systemd" / "kms.env.example").read_text(encoding="utf-8")
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert units
    for unit in units:
        for line in unit.read_text(encoding="utf-8").splitlines():
            if line.startswith("EnvironmentFile="):
                path = line.split("=", 1)[1].lstrip("-")
                assert path in readme and path in example, (unit.name, path)


def test_the_dockerfile_runs_as_non_root_with_the_cli_as_entrypoint() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0].isupper()]
    assert instructions[-1] == "CMD" and "ENTRYPOINT" in instructions
    assert re.search(r'^ENTRYPOINT \["heimdall-kms"\]$', text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert not re.search(r"^(ENV|ARG)\b.*(TOKEN|SECRET|MASTER_KEY)", text, re.M)
    assert 'pip install --no-cache-dir ".[vault,' in text


# -- command lines -----------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _from_text(text: str) -> Iterator[list[str]]:
    """Commands in a piece of code (a fenced block, a backticked span, an Exec line)."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        for match in _COMMAND.finditer(line):
            tokens = _split(match.group("rest"))
            if tokens and tokens[0] not in ("…", "..."):  # "a `heimdall-kms …` line" is prose
                yield tokens
        for listed in _ARGS.findall(line):
            yield [str(arg) for arg in yaml.safe_load(listed)]


def _from_markdown_or_comments(text: str) -> Iterator[list[str]]:
    for block in _FENCE.findall(text):
        yield from _from_text(block)
        if "args:" in block:
            yield from _from_yaml_text(block)
    for span in _SPAN.findall(_FENCE.sub("", text)):
        yield from _from_text(span)


def _from_yaml_text(text: str) -> Iterator[list[str]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return
    for doc in docs:
        yield from _container_args(doc)


def _container_args(node: object) -> Iterator[list[str]]:
    if isinstance(node, dict):
        if "image" in node and isinstance(node.get("args"), list):
            yield [str(arg) for arg in node["args"]]
        for value in node.values():
            yield from _container_args(value)
    elif isinstance(node, list):
        for value in node:
            yield from _container_args(value)


def command_lines() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    sources = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / "docs" / "rotation.md"]
    for path in sorted(sources):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(ROOT))
        if path.suffix == ".md":
            commands = list(_from_markdown_or_comments(text))
        else:
            comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
            commands = list(_from_markdown_or_comments(comments))
            if path.suffix == ".yaml":
                commands += list(_from_yaml_text(text))
            if path.suffix in (".service", ".timer"):
                for line in text.splitlines():
                    if re.match(r"Exec\w*=", line):
                        commands += list(_from_text(line.split("=", 1)[1]))
            if path.name == "Dockerfile":
                entry = re.findall(r"^(?:ENTRYPOINT|CMD) (\[.*\])$", text, re.M)
                commands.append([str(a) for part in entry[1:] for a in yaml.safe_load(part)])
        found += [(where, command) for command in commands]
    return found


def resolve(tokens: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """The subcommand path, its command, and the tokens after it."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(tokens)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        found = command.get_command(click.Context(command), name)  # loads a lazy command
        assert found is not None, f"no command {' '.join([*path, name])!r}"
        command, path = found, [*path, name]
    return path, command, rest


def check_options(command: click.Command, rest: list[str]) -> None:
    options = {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    takes_arguments = any(isinstance(p, click.Argument) for p in command.params)
    tokens = [t.strip("[]") for t in rest]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("-"):
            assert takes_arguments or rest[index - 1].startswith("["), f"stray {token!r}"
            continue
        name, _, inline = token.partition("=")
        if name in ("-h", "--help"):
            continue
        assert name in options, f"{command.name}: no option {name}"
        param = options[name]
        if isinstance(param, click.Option) and (param.is_flag or param.count):
            continue
        value = inline or (tokens[index] if index < len(tokens) else None)
        index += 0 if inline else 1
        if value is not None and isinstance(param.type, click.Choice):
            for choice in value.split("|"):
                assert choice in param.type.choices, f"{name} {choice!r}"


COMMANDS = command_lines()


def test_commands_were_found_in_every_kind_of_file() -> None:
    sources = {where for where, _ in COMMANDS}
    for expected in (
        "docs/rotation.md",
        "deploy/README.md",
        "deploy/kubernetes/cronjob-rotate.yaml",
        "deploy/kubernetes/cronjob-reencrypt.yaml",
        "deploy/kubernetes/deployment.yaml",
        "deploy/systemd/heimdall-kms-serve.service",
        "deploy/systemd/heimdall-kms-rotate.service",
        "deploy/kubernetes/job-migrate.yaml",
        "deploy/systemd/heimdall-kms-migrate@.service",
        "deploy/docker/Dockerfile",
    ):
        assert expected in sources, expected


@pytest.mark.parametrize(("where", "tokens"), COMMANDS, ids=[" ".join(t) for _, t in COMMANDS])
def test_every_command_line_is_a_real_command(where: str, tokens: list[str]) -> None:
    path, command, rest = resolve(tokens)
    assert path or rest == ["--help"], f"{where}: {tokens}"
    assert not isinstance(command, click.Group) or rest == ["--help"], f"{where}: {tokens}"
    check_options(command, rest)


def _paths() -> list[str]:
    paths = set()
    for _, tokens in COMMANDS:
        try:
            paths.add(" ".join(resolve(tokens)[0]))
        except AssertionError:
            continue  # reported by test_every_command_line_is_a_real_command
    return sorted(paths - {""})


@pytest.mark.parametrize("path", _paths())
def test_each_subcommand_path_answers_help(path: str) -> None:
    exe = Path(sys.executable).with_name("heimdall-kms")
    result = subprocess.run(
        [str(exe), *path.split(), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"Usage: heimdall-kms {path}" in result.stdout
