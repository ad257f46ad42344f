"""The helm chart through the real Helm binary: `helm lint --strict`, `helm template` with the
default, CPU and GPU values, every rendered object validated against Kubernetes' schemas
(kubernetes-validate, offline), and assertions on what the objects say."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from backends.spec import ModelSpec
from server.settings import ServerSettings
from tests.conftest import REPO
from tests.deploy.helm import helm, render

CHART = REPO / "helm"
CPU = ("-f", str(CHART / "ci" / "cpu-values.yaml"))
GPU = ("-f", str(CHART / "ci" / "gpu-values.yaml"))
POOL = ("-f", str(CHART / "ci" / "inference-pool-values.yaml"))
VALUE_SETS = {"default": (), "cpu": CPU, "gpu": GPU, "pool": POOL}
CRDS = REPO / "tests" / "deploy" / "crds"
CR_SCHEMAS = {"InferencePool": "inferencepool-v1.json", "HTTPRoute": "httproute-v1.json"}
KUBERNETES = ("1.30.0", "1.35.0")
GPU_RESOURCE = "nvidia.com/gpu"

Obj = dict[str, Any]


def one(objects: list[Obj], kind: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def named(items: list[Obj], name: str) -> Obj:
    (found,) = [item for item in items if item["name"] == name]
    return found


def kinds(objects: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(objects: list[Obj]) -> Obj:
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(objects: list[Obj]) -> dict[str, Obj]:
    return {e["name"]: e for e in container(objects)["env"]}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(CHART, *args) for name, args in VALUE_SETS.items()}


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
    # Only the Prometheus Operator's and the Gateway APIs' CRs are outside Kubernetes' own
    # schemas (the latter are validated against their CRDs below).
    assert all(o["apiVersion"] in ("monitoring.coreos.com/v1", "inference.networking.k8s.io/v1",
                                   "gateway.networking.k8s.io/v1") for o in crds), crds


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


def test_gpu_limit_runtime_and_scheduling_only_with_gpu_on(
        rendered: dict[str, list[Obj]]) -> None:
    for name in ("default", "cpu"):
        pod = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        assert GPU_RESOURCE not in json.dumps(pod)
        assert "runtimeClassName" not in pod
        assert container(rendered[name])["image"].endswith(":0.1.0-cpu")
        assert "/dev/shm" not in json.dumps(pod)
    pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    c = container(rendered["gpu"])
    assert c["resources"]["limits"][GPU_RESOURCE] == 1
    assert c["resources"]["limits"]["memory"] == "32Gi"  # user limits kept
    assert c["image"].endswith(":0.1.0-cuda")
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": "nvidia.com/gpu.product", "operator": "In",
                    "values": ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"]}
    shm = named(pod["volumes"], "dshm")
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
    return str(one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][
        "checksum/model"])


def test_checksum_annotation_rolls_pods_when_the_model_changes(
        rendered: dict[str, list[Obj]]) -> None:
    same = render(CHART, *GPU)
    changed = render(CHART, *GPU, "--set", "model.context_length=16384")
    assert _checksum(rendered["gpu"]) == _checksum(same)
    assert _checksum(rendered["gpu"]) != _checksum(changed)
    assert _checksum(rendered["gpu"]) != _checksum(rendered["default"])
    assert len(_checksum(changed)) == 64
    key_changed = render(CHART, *GPU, "--set", "apiKey.value=other")
    annotations = one(key_changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/api-key"] != one(rendered["gpu"], "Deployment")["spec"][
        "template"]["metadata"]["annotations"]["checksum/api-key"]


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_the_mounted_model_spec_is_one_lokal_accepts(rendered: dict[str, list[Obj]],
                                                     values: str) -> None:
    config = one(rendered[values], "ConfigMap")
    spec = ModelSpec.model_validate(yaml.safe_load(config["data"]["model.yaml"]))
    c = container(rendered[values])
    mount = named(c["volumeMounts"], "model-config")
    assert c["args"][:2] == ["--config", f"{mount['mountPath']}/model.yaml"]
    volume = named(one(rendered[values], "Deployment")["spec"]["template"]["spec"]["volumes"],
                   "model-config")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    if values in ("gpu", "pool"):
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
    pod = one(rendered[values], "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_non_root_read_only_and_the_images_user(rendered: dict[str, list[Obj]],
                                                values: str) -> None:
    pod = one(rendered[values], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert "USER 10001:10001" in (REPO / "Dockerfile").read_text()
    c = container(rendered[values])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert pod["automountServiceAccountToken"] is False


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
        "metric": {"name": "lokal_requests_waiting"},
        "target": {"type": "AverageValue", "averageValue": "2"}}}]
    assert cpu["scaleTargetRef"]["name"] == one(rendered["cpu"], "Deployment")["metadata"][
        "name"]


def test_selectors_match_the_pods(rendered: dict[str, list[Obj]]) -> None:
    for values in VALUE_SETS:
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
    pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    models = named(pod["volumes"], "models")
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert env(rendered["gpu"])["HF_HOME"]["value"] == "/models/huggingface"
    existing = render(CHART, *GPU, "--set", "storage.existingClaim=shared-models")
    assert not [o for o in existing if o["kind"] == "PersistentVolumeClaim"]
    pod = one(existing, "Deployment")["spec"]["template"]["spec"]
    models = named(pod["volumes"], "models")
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


def _cr_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CRDS / CR_SCHEMAS[kind]).read_text())
    return schema


def test_gateway_crs_match_their_published_crd_schemas(rendered: dict[str, list[Obj]]) -> None:
    import jsonschema

    for kind in CR_SCHEMAS:
        obj = one(rendered["pool"], kind)
        jsonschema.validate(obj, _cr_schema(kind))
    broken = json.loads(json.dumps(one(rendered["pool"], "InferencePool")))
    broken["spec"]["targetPorts"] = [{"number": "http"}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _cr_schema("InferencePool"))
    broken = json.loads(json.dumps(one(rendered["pool"], "HTTPRoute")))
    del broken["spec"]["rules"][0]["backendRefs"][0]["name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _cr_schema("HTTPRoute"))


def test_the_pool_selects_the_pods_on_the_serving_port_with_vllm_metric_names(
        rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["pool"]
    pool = one(objects, "InferencePool")["spec"]
    pod = one(objects, "Deployment")["spec"]["template"]
    assert pool["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert pool["targetPorts"] == [{"number": port}]
    assert pod["metadata"]["labels"]["llm-d.ai/engine-type"] == "vllm"
    route = one(objects, "HTTPRoute")["spec"]
    assert route["rules"][0]["backendRefs"] == [{
        "group": "inference.networking.k8s.io", "kind": "InferencePool",
        "name": one(objects, "InferencePool")["metadata"]["name"]}]
    for name in ("default", "cpu", "gpu"):  # off by default: no label, no pool
        labels = one(rendered[name], "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert "llm-d.ai/engine-type" not in labels


def test_tensor_parallel_asks_for_its_gpus_and_tells_vllm(
        rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["pool"]
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2  # tensor 2 x pipeline 1
    spec = yaml.safe_load(one(objects, "ConfigMap")["data"]["model.yaml"])
    assert spec["vllm"]["engine_args"]["tensor_parallel_size"] == 2
    assert spec["vllm"]["engine_args"]["pipeline_parallel_size"] == 1
    assert spec["vllm"]["engine_args"]["gpu_memory_utilization"] == 0.9  # kept
    ModelSpec.model_validate(spec)  # still a valid lokal model YAML
    assert env(objects)["NCCL_DEBUG"]["value"] == "WARN"
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert named(volumes, "dshm")["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


MULTI = ("-f", str(CHART / "ci" / "multinode-values.yaml"))


@pytest.fixture(scope="module")
def multinode() -> list[Obj]:
    return render(CHART, *MULTI)


def test_multinode_renders_a_valid_leaderworkerset(multinode: list[Obj]) -> None:
    done = helm("lint", "--strict", str(CHART), *MULTI)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kinds(multinode) == ["ConfigMap", "LeaderWorkerSet", "Pod", "Service"]
    import jsonschema

    lws = one(multinode, "LeaderWorkerSet")
    schema = json.loads((CRDS / "leaderworkerset-v1.json").read_text())
    jsonschema.validate(lws, schema)
    broken = json.loads(json.dumps(lws))
    broken["spec"]["leaderWorkerTemplate"]["size"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    for obj in multinode:
        if obj["kind"] != "LeaderWorkerSet":
            kubernetes_validate.validate(obj, KUBERNETES[-1], strict=True)
    # Each pod template is a valid Kubernetes PodTemplateSpec too.
    for role in ("leaderTemplate", "workerTemplate"):
        template = lws["spec"]["leaderWorkerTemplate"][role]
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "t"}, "template": template},
                                     KUBERNETES[-1], strict=True)


def test_multinode_groups_gpus_ray_and_leader_only_service(multinode: list[Obj]) -> None:
    values = yaml.safe_load((CHART / "ci" / "multinode-values.yaml").read_text())
    nodes, tensor = values["vllm"]["multiNode"]["nodes"], values["vllm"]["parallel"]["tensor"]
    group = one(multinode, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    assert group["size"] == nodes
    leader, worker = (group[r]["spec"] for r in ("leaderTemplate", "workerTemplate"))
    for pod in (leader, worker):
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == tensor
        assert named(pod["volumes"], "dshm")["emptyDir"]["medium"] == "Memory"
        assert named(pod["volumes"], "dshm")["emptyDir"]["sizeLimit"]
    assert "ray start --head" in leader["containers"][0]["args"][0]
    assert "lokal serve" in leader["containers"][0]["args"][0]
    assert "$(LWS_LEADER_ADDRESS)" in worker["containers"][0]["args"][0]
    assert leader["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "readinessProbe" not in worker["containers"][0]
    selector = one(multinode, "Service")["spec"]["selector"]
    assert selector["leaderworkerset.sigs.k8s.io/worker-index"] == "0"  # leaders only
    spec = yaml.safe_load(one(multinode, "ConfigMap")["data"]["model.yaml"])
    assert spec["vllm"]["engine_args"] == {"tensor_parallel_size": tensor,
                                           "pipeline_parallel_size": nodes,
                                           "distributed_executor_backend": "ray"}
    ModelSpec.model_validate(spec)
