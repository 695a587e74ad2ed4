"""deploy/k8s: every manifest parses and hangs together, and agrees with the code: settings names,
ports, the Redis stream and consumer-group names KEDA scales on. (No cluster: structure only.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from inferline.redis_protocol import WORKERS_GROUP, model_of_requests_stream, requests_streams
from tests.deploy.project import (
    K8S, cli_options, console_scripts, container_environment, containers, env_names,
    k8s, k8s_documents, k8s_one, kustomization, load_settings, module_exists, option_value, pod_specs,
    python_module, secret_value, settings_class, split_address,
)
from worker.health import LIVENESS, READINESS

SERVICE_CONTAINERS = [(w["metadata"]["name"], c) for w, pod in pod_specs() for c in containers(pod, init=False)
                      if python_module(c.get("command", []))]
# container name -> its pod template's annotations (Prometheus finds /metrics through them)
SCRAPE_ANNOTATIONS = {c["name"]: w["spec"]["template"]["metadata"].get("annotations", {})
                      for w, pod in pod_specs() for c in containers(pod, init=False)}


def module_of(container: dict) -> str:
    return python_module(container["command"])


def settings_of(container: dict):
    return load_settings(module_of(container), container_environment(container))


def only_container(workload: str, kind: str = "Deployment") -> dict:
    (container,) = k8s_one(kind, workload)["spec"]["template"]["spec"]["containers"]
    return container


def test_kustomization_lists_every_manifest():
    listed = kustomization()["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    assert len(listed) == len(set(listed))
    assert kustomization()["namespace"] == k8s_one("Namespace", "inferline")["metadata"]["name"]


def test_every_document_has_api_version_kind_and_name():
    for file, doc in k8s_documents():
        assert doc.get("apiVersion") and doc.get("kind"), file
        assert doc.get("metadata", {}).get("name"), file
        assert "namespace" not in doc["metadata"], f"{file}: the kustomization sets the namespace"


def test_the_expected_resources_are_there():
    for kind, name in [("Deployment", "gateway"), ("Service", "gateway"), ("Deployment", "router"),
                       ("Service", "router"), ("Deployment", "builder"), ("Service", "builder"),
                       ("Job", "build-engine"), ("Deployment", "worker"), ("StatefulSet", "redis"),
                       ("Service", "redis"), ("PersistentVolumeClaim", "engine-store"),
                       ("ScaledObject", "worker"), ("Secret", "inferline-redis")]:
        k8s_one(kind, name)
    assert {module_of(c) for _, c in SERVICE_CONTAINERS} == {"gateway", "router", "worker", "builder"}


def test_workload_selectors_match_their_pod_templates():
    for workload, _ in pod_specs():
        if workload["kind"] == "Job":
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]


def test_services_select_pods_and_target_their_ports():
    for service in k8s("Service"):
        selector = service["spec"]["selector"]
        pods = [pod for w, pod in pod_specs()
                if selector.items() <= w["spec"]["template"]["metadata"].get("labels", {}).items()]
        assert pods, f"Service {service['metadata']['name']} selects no pod template"
        ports = {p["containerPort"] for pod in pods for c in containers(pod, init=False) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']}: no container port {port['targetPort']}"


@pytest.mark.parametrize("name,container", SERVICE_CONTAINERS, ids=[n for n, _ in SERVICE_CONTAINERS])
def test_environment_variables_are_settings_of_the_service(name, container):
    module = module_of(container)
    assert module_exists(module)
    env = container_environment(container)
    known = env_names(settings_class(module))
    unknown = sorted(set(env) - set(known))
    assert not unknown, f"{name}: {unknown} are not settings of python -m {module}"
    settings = settings_of(container)  # validates every value as the service would
    for var, value in env.items():
        got = getattr(settings, known[var])
        if isinstance(got, (str, int, float, Path)) and not isinstance(got, bool):
            assert str(got) == value, (name, var, got, value)


def test_containers_without_a_service_set_no_environment():
    for workload, pod in pod_specs():
        for container in containers(pod):
            if not python_module(container.get("command", [])):
                assert not container.get("env"), f"{workload['metadata']['name']}/{container['name']}"


def assert_metrics_port(container: dict, settings) -> None:
    """The container's `metrics` port is the service's metrics_port, and its pod template tells
    Prometheus to scrape it."""
    metrics = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    assert metrics == [settings.metrics_port] and settings.metrics_port > 0
    annotations = SCRAPE_ANNOTATIONS[container["name"]]
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/port") == str(settings.metrics_port)


def assert_worker_probes(container: dict) -> None:
    """Workers serve no API: their `health` port is grpc.health.v1 (health_port), probed natively on
    the liveness and readiness services of worker/health.py; `metrics` is /metrics."""
    settings = settings_of(container)
    assert [p["name"] for p in container["ports"]] == ["health", "metrics"], "workers serve health and /metrics only"
    (health_port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "health"]
    assert health_port == settings.health_port > 0
    assert_metrics_port(container, settings)
    expected = {"startupProbe": READINESS, "readinessProbe": READINESS, "livenessProbe": LIVENESS}
    for kind, service in expected.items():
        probe = container[kind]
        assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, f"worker {kind}: the native gRPC probe"
        # A grpc probe takes a port number only (no name): it must be the `health` port.
        assert probe["grpc"] == {"port": health_port, "service": service}, f"worker {kind}: {probe['grpc']}"
    # Loading and verifying the engine (on a GPU, capturing CUDA graphs) takes minutes; liveness and
    # readiness start only once the startup probe passed.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    liveness = container["livenessProbe"]
    assert liveness["timeoutSeconds"] < liveness["periodSeconds"]
    assert settings.readiness_timeout_s < settings.liveness_timeout_s


def test_the_healthcheck_script_knows_the_workers_health_names_and_port():
    from tests.deploy.test_healthcheck import healthcheck
    from worker.settings import WorkerSettings

    assert healthcheck.WORKER_CHECKS == {"liveness": LIVENESS, "readiness": READINESS}
    assert healthcheck.WORKER_HEALTH_PORT == WorkerSettings.model_fields["health_port"].default


@pytest.mark.parametrize("name,container", SERVICE_CONTAINERS, ids=[n for n, _ in SERVICE_CONTAINERS])
def test_probes_use_the_port_the_service_listens_on(name, container):
    probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
    assert {"readinessProbe", "livenessProbe"} <= set(container), name
    if module_of(container) == "worker":
        assert_worker_probes(container)
        return
    settings = settings_of(container)
    assert settings.host == "0.0.0.0", f"{name} would only listen on loopback"
    container_ports = {p["containerPort"] for p in container["ports"] if p["name"] == "grpc"}
    assert container_ports == {settings.port}
    assert_metrics_port(container, settings)
    for probe in probes:
        assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, f"{name}: use the native gRPC probe"
        assert probe["grpc"]["port"] in container_ports and probe["grpc"]["port"] == settings.port


def test_volumes_reference_existing_claims_and_are_mounted():
    claims = {pvc["metadata"]["name"] for pvc in k8s("PersistentVolumeClaim")}
    for workload, pod in pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, workload["metadata"]["name"]
        for container in containers(pod):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in {
                    t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}, mount


def test_engine_store_is_shared_rwx_written_by_the_builder_only():
    assert k8s_one("PersistentVolumeClaim", "engine-store")["spec"]["accessModes"] == ["ReadWriteMany"]
    for workload, pod in pod_specs():
        for container in containers(pod):
            for mount in container.get("volumeMounts", []):
                if mount["name"] != "engine-store":
                    continue
                writer = workload["metadata"]["name"] == "builder"
                assert mount.get("readOnly", False) is not writer, f"{workload['metadata']['name']}/{container['name']}"
                if python_module(container.get("command", [])):
                    assert Path(settings_of(container).store_dir) == Path(mount["mountPath"])


def test_builder_is_a_single_replica():
    builder = k8s_one("Deployment", "builder")["spec"]
    assert builder["replicas"] == 1 and builder["strategy"]["type"] == "Recreate"


def test_workers_reserve_a_gpu_and_wait_for_the_engine():
    container = only_container("worker")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    settings = settings_of(container)
    assert settings.device == "cuda"
    (init,) = k8s_one("Deployment", "worker")["spec"]["template"]["spec"]["initContainers"]
    assert f"{settings.store_dir}/{settings.engine}/manifest.json" in " ".join(init["command"])
    grace = k8s_one("Deployment", "worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_timeout_s


def test_the_build_job_builds_what_the_workers_serve_through_the_builder():
    command = only_container("build-engine", "Job")["command"]
    assert command[0] in console_scripts() and command[1] == "build"
    assert not [f for f in command if f.startswith("--") and f not in cli_options()["build"]]
    host, port = split_address(option_value(command, "--builder"))
    assert host == "builder"
    assert port in {p["port"] for p in k8s_one("Service", "builder")["spec"]["ports"]}
    assert option_value(command, "--name") == settings_of(only_container("worker")).engine


def test_addresses_point_at_services():
    host, port = split_address(settings_of(only_container("gateway")).router_address)
    service = k8s_one("Service", host)
    assert port in {p["port"] for p in service["spec"]["ports"]}
    for _, container in SERVICE_CONTAINERS:
        url = settings_of(container).redis_url
        assert url == "redis://redis:6379/0", url
    assert {p["port"] for p in k8s_one("Service", "redis")["spec"]["ports"]} == {6379}


def test_redis_is_persistent():
    redis = k8s_one("StatefulSet", "redis")["spec"]
    (container,) = redis["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:")
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    assert any(m["mountPath"] == "/data" for m in container["volumeMounts"])
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


def test_keda_scales_the_worker_deployment_on_the_streams_the_code_uses():
    scaled = k8s_one("ScaledObject", "worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == "worker" and target.get("kind", "Deployment") == "Deployment"
    k8s_one("Deployment", "worker")
    worker = settings_of(only_container("worker"))
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {WORKERS_GROUP}
    # Per band: a pendingEntriesCount trigger (load; keeps busy workers) and, to wake a model scaled to
    # zero, a lagCount one (the PEL of a model without workers is always empty).
    pending = [t for t in triggers if "pendingEntriesCount" in t["metadata"]]
    lag = [t for t in triggers if "lagCount" in t["metadata"]]
    assert len(pending) + len(lag) == len(triggers)
    assert sorted(t["metadata"]["stream"] for t in pending) == sorted(requests_streams(worker.engine))
    if scaled["spec"].get("minReplicaCount", 0) == 0:
        assert sorted(t["metadata"]["stream"] for t in lag) == sorted(requests_streams(worker.engine))
    max_batch = int(option_value(only_container("build-engine", "Job")["command"], "--max-batch-size"))
    for trigger in pending:
        assert 0 < int(trigger["metadata"]["pendingEntriesCount"]) <= max_batch
    for trigger in lag:
        assert not {"pendingEntriesCount", "streamLength"} & trigger["metadata"].keys()  # KEDA would read lag only
        assert 0 < int(trigger["metadata"]["lagCount"])
        assert int(trigger["metadata"]["activationLagCount"]) == 0, "one queued request must wake a worker"
    for trigger in triggers:
        host, port = split_address(trigger["metadata"]["address"])
        assert host.split(".")[0] == "redis" and port == 6379
        assert host in ("redis", f"redis.{kustomization()['namespace']}.svc.cluster.local")
        auth = k8s_one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] in ("password", "username")
            secret_value(ref["name"], ref["key"])


def test_models_keda_scales_to_zero_are_queued_by_the_router_without_workers():
    """A model whose workers may be scaled to zero must be in the router's scale_from_zero_models:
    otherwise the router answers NOT_FOUND, nothing is queued, and KEDA never starts a worker."""
    scale_from_zero = set(settings_of(only_container("router")).scale_from_zero_models)
    for scaled in k8s("ScaledObject"):
        if scaled["spec"].get("minReplicaCount", 0) > 0:
            continue
        target = k8s_one(scaled["spec"]["scaleTargetRef"].get("kind", "Deployment"),
                         scaled["spec"]["scaleTargetRef"]["name"])
        engines = {settings_of(c).engine for c in target["spec"]["template"]["spec"]["containers"]
                   if python_module(c.get("command", [])) == "worker"}
        streamed = {model_of_requests_stream(t["metadata"]["stream"]) for t in scaled["spec"]["triggers"]}
        assert engines and streamed == engines, f"ScaledObject {scaled['metadata']['name']} scales on other models"
        missing = sorted(engines - scale_from_zero)
        assert not missing, (f"ScaledObject {scaled['metadata']['name']} scales {missing} to zero: add them to "
                             "the router's INFERLINE_ROUTER_SCALE_FROM_ZERO_MODELS")
