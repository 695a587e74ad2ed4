"""What tests/deploy checks the deployment files against: the repository, the services' settings
classes, the console scripts, and small parsers for Dockerfiles, .dockerignore, compose and k8s YAML.

Nothing here touches the network or a Docker engine."""
from __future__ import annotations

import contextlib
import fnmatch
import importlib
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import AliasChoices

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "compose.yaml"

# `python -m <module>` -> the settings class that module reads its environment into.
SETTINGS = {
    "gateway": ("gateway.settings", "GatewaySettings"),
    "router": ("router.settings", "RouterSettings"),
    "worker": ("worker.settings", "WorkerSettings"),
    "builder": ("builder.settings", "BuilderSettings"),
}
HEALTHCHECK_SCRIPT = "/app/deploy/healthcheck.py"  # where the images put deploy/healthcheck.py
PYTHONS = ("python", "python3")


def settings_class(module: str) -> type:
    mod, name = SETTINGS[module]
    return getattr(importlib.import_module(mod), name)


def env_names(cls: type) -> dict[str, str]:
    """Environment variable -> field name, as pydantic-settings reads them: a field with a validation
    alias is read under its alias(es) only (no prefix); any other under env_prefix + its name."""
    config = cls.model_config
    prefix = config.get("env_prefix", "")
    sensitive = config.get("case_sensitive", False)
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [prefix + field_name]
        for choice in choices:
            names[choice if sensitive else choice.upper()] = field_name
    return names


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with every inferline setting removed, then `env` set; restored afterwards."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key.upper().startswith("INFERLINE_") or key.upper() == "REDIS_URL":
                del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings(module: str, env: dict[str, str]) -> Any:
    """The settings object `python -m <module>` builds from this environment (no flags)."""
    with environment(env):
        return settings_class(module)()


def python_module(command: list[str]) -> str | None:
    """`python -m X ...` -> X."""
    if len(command) >= 3 and command[0] in PYTHONS and command[1] == "-m":
        return command[2]
    return None


def module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return (path / "__main__.py").is_file() or path.with_suffix(".py").is_file()


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def console_scripts() -> dict[str, str]:
    return pyproject()["project"].get("scripts", {})


@cache
def cli_options() -> dict[str, set[str]]:
    """`inferline` subcommand -> the option strings it accepts (from the typer app itself)."""
    import typer.main

    from inferline.cli import app

    group = typer.main.get_command(app)
    return {name: {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
            for name, cmd in group.commands.items()}


def option_value(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> str:
    """A compose value with ${VAR:-default} replaced by its default (the shell's environment unset)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


# --- Dockerfiles -------------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path}: a continuation line at the end"
    return instructions


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments: the JSON exec form, or a shell form split like a shell."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY/ADD without --from (those copy from the build context)."""
    parts = [p for p in shlex.split(instruction.args)]
    if any(p.startswith("--from") for p in parts):
        return [], ""
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1], parts[-1]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` (relative to the context) or a folder above it out."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in dockerignore_patterns():
        if pattern.startswith("!"):
            raise AssertionError("exceptions (!) in .dockerignore are not handled by this check")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], pattern[3:]):
                return True
    return False


# --- compose and Kubernetes ----------------------------------------------------------------------------

@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_services() -> dict[str, dict]:
    return compose()["services"]


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate(v) for k, v in env.items()}


@cache
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@cache
def k8s_documents() -> list[tuple[str, dict]]:
    """(file name, document) of every resource the kustomization lists."""
    docs = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                docs.append((name, doc))
    return docs


def k8s(kind: str) -> list[dict]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def k8s_one(kind: str, name: str) -> dict:
    found = [doc for doc in k8s(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


def pod_specs() -> list[tuple[dict, dict]]:
    """(workload, its pod spec) of every workload."""
    return [(doc, doc["spec"]["template"]["spec"]) for _, doc in k8s_documents() if doc["kind"] in WORKLOADS]


def containers(pod: dict, init: bool = True) -> list[dict]:
    return [*(pod.get("initContainers", []) if init else []), *pod["containers"]]


def secret_value(name: str, key: str) -> str:
    secret = k8s_one("Secret", name)
    data = secret.get("stringData") or {}
    assert key in data, f"Secret {name} has no key {key}"
    return data[key]


def container_environment(container: dict) -> dict[str, str]:
    """name -> value of a container's env (values from a Secret of the manifests resolved)."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_value(ref["name"], ref["key"])
    assert "envFrom" not in container, "envFrom hides variable names from these checks"
    return env
