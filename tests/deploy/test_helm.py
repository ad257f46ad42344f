"""The helm chart through the real Helm binary: `helm lint --strict`, `helm template` with every
value set in helm/ci/, every rendered object validated against Kubernetes' schemas
(kubernetes-validate, offline), and assertions on what the objects say. The scale-out objects
(InferencePool, HTTPRoute, LeaderWorkerSet) are checked in test_scaleout.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from lokal.backends.spec import ModelSpec
from lokal.server.settings import ServerSettings
from tests.conftest import REPO
from tests.deploy.chart import (
    CHART,
    VALUE_SETS,
    Obj,
    container,
    env,
    kinds,
    named,
    one,
    pod,
    pod_template,
)
from tests.deploy.helm import helm, render

KUBERNETES = ("1.30.0", "1.35.0")
GPU_RESOURCE = "nvidia.com/gpu"
CPU, GPU = VALUE_SETS["cpu"], VALUE_SETS["gpu"]
# The value sets whose serving pods a Deployment runs (multi-node runs a LeaderWorkerSet).
SINGLE = [name for name in VALUE_SETS if name != "multi"]


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_helm_lint_strict(values: str) -> None:
    done = helm("lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(rendered: dict[str, list[Obj]], values: str,
                                               version: str) -> None:
    crds = []
    for obj in rendered[values]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            crds.append(obj)
    # Only the Prometheus Operator's, the Gateway APIs' and LWS's CRs are outside Kubernetes'
    # own schemas (the last three are validated against their CRDs in test_scaleout.py).
    assert all(o["apiVersion"] in ("monitoring.coreos.com/v1", "inference.networking.k8s.io/v1",
                                   "gateway.networking.k8s.io/v1", "leaderworkerset.x-k8s.io/v1")
               for o in crds), crds


def test_validation_really_rejects_a_broken_object(rendered: dict[str, list[Obj]]) -> None:
    broken = json.loads(json.dumps(one(rendered["cpu"], "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES[0], strict=True)


def test_what_each_value_set_creates(rendered: dict[str, list[Obj]]) -> None:
    assert kinds(rendered["default"]) == ["ConfigMap", "Deployment", "Pod", "Service"]
    assert kinds(rendered["cpu"]) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                      "Ingress", "Pod", "PodDisruptionBudget", "Service",
                                      "ServiceMonitor"]
    assert kinds(rendered["gpu"]) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                      "PersistentVolumeClaim", "Pod", "Secret", "Service"]
    assert kinds(rendered["pool"]) == ["ConfigMap", "Deployment", "HTTPRoute", "InferencePool",
                                       "Pod", "Service"]
    assert kinds(rendered["multi"]) == ["ConfigMap", "LeaderWorkerSet", "PersistentVolumeClaim",
                                        "Pod", "Service"]


def test_gpu_limit_runtime_and_scheduling_only_with_gpu_on(
        rendered: dict[str, list[Obj]]) -> None:
    for name in ("default", "cpu"):
        spec = pod(rendered[name])
        assert GPU_RESOURCE not in json.dumps(spec)
        assert "runtimeClassName" not in spec
        assert container(rendered[name])["image"].endswith(":0.1.0-cpu")
        assert "/dev/shm" not in json.dumps(spec)
    spec = pod(rendered["gpu"])
    c = container(rendered["gpu"])
    assert c["resources"]["limits"][GPU_RESOURCE] == 1
    assert c["resources"]["limits"]["memory"] == "32Gi"  # user limits kept
    assert c["image"].endswith(":0.1.0-cuda")
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"]
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": "nvidia.com/gpu.product", "operator": "In",
                    "values": ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"]}
    shm = named(spec["volumes"], "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["args"][c["args"].index("--backend") + 1] == "vllm"


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_probes_paths_and_ports(rendered: dict[str, list[Obj]], values: str) -> None:
    c = container(rendered[values])
    (port,) = c["ports"]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    assert c["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model loading
    service = one(rendered[values], "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert c["args"][c["args"].index("--port") + 1] == "8000"


def test_a_changed_port_moves_container_service_and_args() -> None:
    objects = render(CHART, "--set", "server.port=9000", "--set", "service.port=80")
    c = container(objects)
    assert c["ports"][0]["containerPort"] == 9000
    assert c["args"][c["args"].index("--port") + 1] == "9000"
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 80


def test_api_key_comes_from_a_secret(rendered: dict[str, list[Obj]]) -> None:
    assert "LOKAL_API_KEY" not in env(rendered["default"])
    cpu = env(rendered["cpu"])["LOKAL_API_KEY"]
    assert cpu["valueFrom"]["secretKeyRef"] == {"name": "lokal-keys", "key": "api-key"}
    assert "value" not in cpu
    assert not [o for o in rendered["cpu"] if o["kind"] == "Secret"]  # existing one is used
    gpu = env(rendered["gpu"])["LOKAL_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = one(rendered["gpu"], "Secret")
    assert gpu == {"name": secret["metadata"]["name"], "key": "api-key"}
    assert base64.b64decode(secret["data"]["api-key"]).decode() == "change-me"
    monitor = one(rendered["cpu"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert monitor["authorization"] == {"type": "Bearer",
                                        "credentials": {"name": "lokal-keys", "key": "api-key"}}
    assert monitor["path"] == "/metrics" and monitor["port"] == "http"


def test_open_metrics_need_no_scrape_credentials() -> None:
    objects = render(CHART, *CPU, "--set", "metrics.open=true")
    assert "authorization" not in one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert env(objects)["LOKAL_METRICS_OPEN"]["value"] == "true"


def test_api_key_enabled_without_a_secret_fails_to_render() -> None:
    done = helm("template", "lokal", str(CHART), "--set", "apiKey.enabled=true")
    assert done.returncode != 0
    assert "apiKey.existingSecret" in done.stderr


def _checksum(objects: list[Obj]) -> str:
    return str(pod_template(objects)["metadata"]["annotations"]["checksum/model"])


def test_checksum_annotation_rolls_pods_when_the_model_changes(
        rendered: dict[str, list[Obj]]) -> None:
    same = render(CHART, *GPU)
    changed = render(CHART, *GPU, "--set", "model.context_length=16384")
    assert _checksum(rendered["gpu"]) == _checksum(same)
    assert _checksum(rendered["gpu"]) != _checksum(changed)
    assert _checksum(rendered["gpu"]) != _checksum(rendered["default"])
    assert len(_checksum(changed)) == 64
    key_changed = render(CHART, *GPU, "--set", "apiKey.value=other")
    annotations = pod_template(key_changed)["metadata"]["annotations"]
    assert annotations["checksum/api-key"] != pod_template(rendered["gpu"])["metadata"][
        "annotations"]["checksum/api-key"]


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_the_mounted_model_spec_is_one_lokal_accepts(rendered: dict[str, list[Obj]],
                                                     values: str) -> None:
    config = one(rendered[values], "ConfigMap")
    spec = ModelSpec.model_validate(yaml.safe_load(config["data"]["model.yaml"]))
    c = container(rendered[values])
    mount = named(c["volumeMounts"], "model-config")
    assert c["args"][:2] == ["--config", f"{mount['mountPath']}/model.yaml"]
    volume = named(pod(rendered[values])["volumes"], "model-config")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    if values in ("gpu", "pool", "multi"):
        assert spec.vllm is not None and spec.gguf is None  # no default leaked in
    else:
        assert spec == ModelSpec.from_yaml(REPO / "configs" / "smollm2-135m-instruct.yaml"
                                           ).model_copy(update={"base_dir": None, "source": None,
                                                                "llamacpp": spec.llamacpp})


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_every_lokal_variable_the_chart_sets_is_a_real_setting(
        rendered: dict[str, list[Obj]], values: str) -> None:
    names = [n for n in env(rendered[values]) if n.startswith("LOKAL_")]
    assert "LOKAL_HOST" in names and "LOKAL_SHUTDOWN_GRACE" in names
    for name in names:
        assert name.removeprefix("LOKAL_").lower() in ServerSettings.model_fields, name
    grace = int(env(rendered[values])["LOKAL_SHUTDOWN_GRACE"]["value"])
    assert pod(rendered[values])["terminationGracePeriodSeconds"] > grace


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_non_root_read_only_and_the_images_user(rendered: dict[str, list[Obj]],
                                                values: str) -> None:
    spec = pod(rendered[values])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert "USER 10001:10001" in (REPO / "Dockerfile").read_text()
    c = container(rendered[values])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert spec["automountServiceAccountToken"] is False


def test_ingress_keeps_streams_unbuffered(rendered: dict[str, list[Obj]]) -> None:
    ingress = one(rendered["cpu"], "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 600
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "8m"
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {"name": one(rendered["cpu"], "Service")["metadata"][
        "name"], "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_autoscaling_on_cpu_or_on_requests_waiting(rendered: dict[str, list[Obj]]) -> None:
    assert "replicas" not in one(rendered["cpu"], "Deployment")["spec"]  # the HPA owns it
    assert one(rendered["default"], "Deployment")["spec"]["replicas"] == 1
    cpu = one(rendered["cpu"], "HorizontalPodAutoscaler")["spec"]
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (2, 6)
    assert cpu["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
    gpu = one(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]
    assert gpu["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "vllm_num_requests_waiting"},  # the README's adapter rule
        "target": {"type": "AverageValue", "averageValue": "2"}}}]
    assert cpu["scaleTargetRef"]["name"] == one(rendered["cpu"], "Deployment")["metadata"][
        "name"]


def test_selectors_match_the_pods(rendered: dict[str, list[Obj]]) -> None:
    for values in SINGLE:  # multi-node: test_scaleout.py
        deployment = one(rendered[values], "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for selector in (deployment["spec"]["selector"]["matchLabels"],
                         one(rendered[values], "Service")["spec"]["selector"]):
            assert selector.items() <= labels.items()
    pdb = one(rendered["cpu"], "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    pod_labels = one(rendered["cpu"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = one(rendered["cpu"], "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= one(
        rendered["cpu"], "Service")["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_storage_claim_or_an_existing_one(rendered: dict[str, list[Obj]]) -> None:
    claim = one(rendered["gpu"], "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    models = named(pod(rendered["gpu"])["volumes"], "models")
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert env(rendered["gpu"])["HF_HOME"]["value"] == "/models/huggingface"
    existing = render(CHART, *GPU, "--set", "storage.existingClaim=shared-models")
    assert not [o for o in existing if o["kind"] == "PersistentVolumeClaim"]
    models = named(pod(existing)["volumes"], "models")
    assert models["persistentVolumeClaim"]["claimName"] == "shared-models"


@pytest.mark.parametrize("bad", [
    "backend=tensorrt", "image.tag=latest", "gpu.count=0", "unknownKey=1",
    "server.logFormat=xml", "image.flavour=rocm", "probes.startup.periodSeconds=0",
])
def test_the_values_schema_refuses_bad_values(bad: str) -> None:
    done = helm("template", "lokal", str(CHART), "--set", bad)
    assert done.returncode != 0, bad
    assert "schema" in done.stderr.lower(), done.stderr


def _schema_paths(schema: Obj, prefix: str = "") -> dict[str, Obj]:
    out: dict[str, Obj] = {}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out[path] = sub
        if sub.get("additionalProperties") is False:
            out.update(_schema_paths(sub, f"{path}."))
    return out


def _value_paths(values: Obj, schema: dict[str, Obj], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, dict) and schema.get(path, {}).get("additionalProperties") is False:
            out += _value_paths(value, schema, f"{path}.")
    return out


def _commented_paths(text: str) -> dict[str, bool]:
    """Each key's dotted path in values.yaml -> whether a comment line sits right above it."""
    out: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z]\w*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        out[".".join(k for _, k in stack)] = i > 0 and lines[i - 1].strip().startswith("#")
    return out


def test_every_value_is_documented() -> None:
    schema = _schema_paths(json.loads((CHART / "values.schema.json").read_text()))
    assert all(sub.get("description") for sub in schema.values()), [
        p for p, sub in schema.items() if not sub.get("description")]
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    paths = _value_paths(values, schema)
    assert set(paths) <= set(schema), set(paths) - set(schema)
    commented = _commented_paths(text)
    for path in paths:
        if schema[path].get("additionalProperties") is False:
            continue  # a group of values: documented through its members
        parent = path.rpartition(".")[0]
        # A value is commented itself, or as one of a small group under a commented key
        # (probes.startup: periodSeconds, timeoutSeconds, ...).
        assert commented[path] or (parent and commented[parent]), f"{path}: no comment"


def test_the_chart_is_helm_packageable(tmp_path: Path) -> None:
    done = helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (package,) = tmp_path.glob("lokal-0.1.0.tgz")
    assert package.stat().st_size > 0
