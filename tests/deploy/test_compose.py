"""compose.yaml: valid against the Compose Specification schema, and consistent with the code.

The schema is tests/deploy/compose-spec.json, vendored from compose-spec/compose-spec
(schema/compose-spec.json at commit 00655e2222608fa6eaecdf12ac5195889ca2244a; see README.md here)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from inferline.redis_protocol import requests_streams
from tests.deploy.project import (
    DEPLOY, HEALTHCHECK_SCRIPT, PYTHONS, ROOT, cli_options, compose, compose_environment, compose_services,
    console_scripts, env_names, load_settings, module_exists, option_value, python_module, settings_class,
    split_address,
)

SCHEMA = Path(__file__).with_name("compose-spec.json")
SERVICES = compose_services()
PYTHON_SERVICES = {name: python_module(s["command"]) for name, s in SERVICES.items() if python_module(s.get("command") or [])}
WORKERS = {name: s for name, s in SERVICES.items() if PYTHON_SERVICES.get(name) == "worker"}
BUILD_JOB = "build-engine"


def effective_settings(name: str):
    return load_settings(PYTHON_SERVICES[name], compose_environment(SERVICES[name]))


def service_port(name: str) -> int:
    return effective_settings(name).port


def test_compose_matches_the_compose_specification_schema():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_file():
    # Guards against a schema that accepts anything (e.g. a truncated copy).
    schema = json.loads(SCHEMA.read_text())
    broken = {"services": {"x": {"image": "redis", "depends_on": {"y": {"condition": "started"}}}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_the_expected_services_are_there():
    assert {"redis", "builder", BUILD_JOB, "router", "gateway"} <= set(SERVICES)
    assert set(PYTHON_SERVICES.values()) == {"gateway", "router", "worker", "builder"}
    assert len(WORKERS) == 2


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_build_points_at_an_existing_dockerfile(name):
    service = SERVICES[name]
    if "build" not in service:
        assert "/" not in service["image"].split(":")[0], f"{name}: an image without a build should be an official one"
        return
    build = service["build"]
    context = ROOT / build["context"]
    assert context.resolve() == ROOT, f"{name}: the Dockerfiles COPY paths relative to the repository root"
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
    assert dockerfile.parent == DEPLOY


def test_one_image_name_per_dockerfile():
    images: dict[str, str] = {}
    for name, service in SERVICES.items():
        if "build" in service:
            dockerfile = service["build"]["dockerfile"]
            assert images.setdefault(service["image"], dockerfile) == dockerfile, f"{name}: {service['image']} is built twice"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_commands_name_real_programs(name):
    command = SERVICES[name].get("command")
    if command is None or SERVICES[name].get("image", "").startswith("redis"):
        return
    assert isinstance(command, list), f"{name}: use the exec form (a list), so signals reach the service"
    if command[0] in PYTHONS:
        assert module_exists(python_module(command)), f"{name}: no module {command[2]}"
    else:
        assert command[0] in console_scripts(), f"{name}: {command[0]} is not a console script of pyproject.toml"
        subcommand = command[1]
        options = cli_options()
        assert subcommand in options, f"{name}: `{command[0]} {subcommand}` does not exist"
        flags = [arg for arg in command[2:] if arg.startswith("--")]
        unknown = [flag for flag in flags if flag not in options[subcommand]]
        assert not unknown, f"{name}: `{command[0]} {subcommand}` has no {unknown}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_environment_variables_are_settings_of_the_service(name):
    env = compose_environment(SERVICES[name])
    module = PYTHON_SERVICES.get(name)
    if module is None:
        assert not env, f"{name}: sets {sorted(env)} but runs no service that reads settings"
        return
    known = env_names(settings_class(module))
    unknown = sorted(set(env) - set(known))
    assert not unknown, f"{name}: {unknown} are not settings of python -m {module} (known: {sorted(known)})"
    # And the service takes them up: the settings it would build carry these values.
    settings = effective_settings(name)
    for var, value in env.items():
        got = getattr(settings, known[var])
        if isinstance(got, (str, int, float, Path)) and not isinstance(got, bool):
            assert str(got) == value or (isinstance(got, Path) and got == Path(value)), (name, var, got, value)


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_servers_listen_on_all_interfaces(name):
    if PYTHON_SERVICES[name] == "worker":
        return  # its only server, grpc.health.v1 on health_port, always binds 0.0.0.0
    assert effective_settings(name).host in ("0.0.0.0", "::", "[::]"), f"{name} would only listen on loopback"


def test_volumes_are_declared_and_mounted_as_intended():
    declared = set(compose().get("volumes") or {})
    mounts: dict[str, dict[str, str]] = {}
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                mounts.setdefault(source, {})[name] = mode[0] if mode else "rw"
    assert mounts["engine-store"]["builder"] == "rw"
    for reader in [*WORKERS, "gateway"]:
        assert mounts["engine-store"][reader] == "ro", f"{reader} should mount the engine store read-only"
    assert "redis-data" in mounts and "redis" in mounts["redis-data"]
    assert not declared - set(mounts), f"declared and unused: {declared - set(mounts)}"


def test_store_paths_agree():
    mount = {name: v.split(":")[1] for name, s in SERVICES.items() for v in s.get("volumes", []) if v.startswith("engine-store:")}
    for name, path in mount.items():
        assert Path(effective_settings(name).store_dir) == Path(path), f"{name}: store_dir is not where the store is mounted"


def test_depends_on_targets_exist_and_are_active_with_their_dependents():
    for name, service in SERVICES.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on missing {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy; it has no healthcheck"
            target_profiles = set(SERVICES[target].get("profiles", []))
            assert not target_profiles or target_profiles >= set(service.get("profiles", [])) > set(), (
                f"{name} depends on {target}, which its profiles may leave inactive")


def test_workers_wait_for_redis_and_the_engine_build():
    for name, worker in WORKERS.items():
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert worker["depends_on"][BUILD_JOB]["condition"] == "service_completed_successfully", name
    assert SERVICES[BUILD_JOB].get("restart") == "no"


def test_gpu_and_cpu_workers_and_their_profiles():
    gpu = [s for s in WORKERS.values() if s.get("profiles") == ["gpu"]]
    cpu = [s for s in WORKERS.values() if s.get("profiles") == ["cpu"]]
    assert len(gpu) == len(cpu) == 1
    devices = gpu[0]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert compose_environment(gpu[0])["INFERLINE_WORKER_DEVICE"] == "cuda"
    assert gpu[0]["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert compose_environment(cpu[0])["INFERLINE_WORKER_DEVICE"] == "cpu"
    assert "deploy" not in cpu[0]
    # Nothing else is profiled: `docker compose --profile X up` always has the rest of the stack.
    assert [n for n, s in SERVICES.items() if s.get("profiles")] == sorted(WORKERS, key=list(SERVICES).index)


def test_the_build_job_builds_what_the_workers_serve_through_the_builder():
    command = SERVICES[BUILD_JOB]["command"]
    assert command[:2] == ["inferline", "build"]
    host, port = split_address(option_value(command, "--builder"))
    assert host == "builder" and port == service_port("builder")
    assert SERVICES[BUILD_JOB]["depends_on"]["builder"]["condition"] == "service_healthy"
    engine = option_value(command, "--name")
    assert option_value(command, "--source") == "smollm2-135m"
    for name in WORKERS:
        assert effective_settings(name).engine == engine, name
    assert requests_streams(engine)  # a valid stream name for the router and workers


def test_addresses_point_at_services_and_their_ports():
    host, port = split_address(effective_settings("gateway").router_address)
    assert host == "router" and port == service_port("router")
    for name in PYTHON_SERVICES:
        url = effective_settings(name).redis_url
        if url:
            assert url.startswith("redis://redis:6379/"), f"{name}: {url}"


def test_redis_is_persistent_and_healthchecked():
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_healthchecks_probe_the_port_the_service_listens_on(name):
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] in PYTHONS and test[2] == HEALTHCHECK_SCRIPT, test
    assert (ROOT / "deploy" / "healthcheck.py").is_file()
    if PYTHON_SERVICES[name] == "worker":
        # The worker's readiness on its health port (its only port; it serves no API).
        health_port = effective_settings(name).health_port
        assert health_port > 0, f"{name}: a fixed health_port, or nothing can probe it"
        assert test[3:] == ["worker", str(health_port), "readiness"], test
    else:
        assert test[3] == "grpc" and int(test[4]) == service_port(name), f"{name}: probes {test[4]}"


def test_published_gateway_port_is_the_one_it_listens_on():
    (published,) = SERVICES["gateway"]["ports"]
    assert int(published.split(":")[-1]) == service_port("gateway")
    assert all("ports" not in s for n, s in SERVICES.items() if n != "gateway"), "only the gateway is public"


def test_stop_grace_periods_cover_the_drain():
    def seconds(value: str) -> float:
        assert value.endswith("s"), value
        return float(value[:-1])

    for name in WORKERS:
        assert seconds(SERVICES[name]["stop_grace_period"]) > effective_settings(name).drain_timeout_s
    assert seconds(SERVICES["gateway"]["stop_grace_period"]) > effective_settings("gateway").shutdown_grace_s
