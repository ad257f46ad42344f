"""The chart's scale-out objects: the InferencePool and HTTPRoute (Gateway API Inference
Extension, llm-d), vllm.parallel and the multi-node LeaderWorkerSet, each validated against
the CRD schema its project publishes (vendored in crds/) and asserted on."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lokal.backends.spec import ModelSpec
from tests.conftest import REPO
from tests.deploy.chart import (
    CHART,
    LWS_WORKER_INDEX,
    VALUE_SETS,
    Obj,
    container,
    cr_schema,
    env,
    kinds,
    named,
    one,
    pod,
    pod_template,
    workload,
)
from tests.deploy.helm import helm, render

POOL, MULTI = VALUE_SETS["pool"], VALUE_SETS["multi"]
# Multi-node groups (with their shared model volume) behind the pool and an HPA: every
# option at once.
MULTI_ALL = (*MULTI, "--set", "inferencePool.enabled=true",
             "--set", "inferencePool.httpRoute.enabled=true",
             "--set", "inferencePool.httpRoute.gateway=inference-gateway",
             "--set", "autoscaling.enabled=true")
ENGINE_TYPE = "llm-d.ai/engine-type"
GPU_RESOURCE = "nvidia.com/gpu"
KUBERNETES = ("1.30.0", "1.35.0")


def ci_values(name: str) -> Obj:
    values: Obj = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return values


def model_spec(objects: list[Obj]) -> Obj:
    spec: Obj = yaml.safe_load(one(objects, "ConfigMap")["data"]["model.yaml"])
    ModelSpec.model_validate(spec)  # still a model YAML lokal accepts
    return spec


@pytest.fixture(scope="module")
def multi_all() -> list[Obj]:
    return render(CHART, *MULTI_ALL)


def test_all_options_at_once_lint_strict() -> None:
    done = helm("lint", "--strict", str(CHART), *MULTI_ALL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout


@pytest.mark.parametrize(("values", "kind"), [
    ("pool", "InferencePool"), ("pool", "HTTPRoute"), ("multi", "LeaderWorkerSet"),
    ("all", "InferencePool"), ("all", "HTTPRoute"), ("all", "LeaderWorkerSet"),
])
def test_crs_match_their_published_crd_schemas(rendered: dict[str, list[Obj]],
                                               multi_all: list[Obj], values: str,
                                               kind: str) -> None:
    objects = multi_all if values == "all" else rendered[values]
    jsonschema.validate(one(objects, kind), cr_schema(kind))


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return change


def _delete(path: str) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]
    return change


@pytest.mark.parametrize(("kind", "change"), [
    ("InferencePool", _set("spec.targetPorts", [{"number": "http"}])),
    ("InferencePool", _set("spec.targetPorts", [{"number": 70000}])),
    ("InferencePool", _delete("spec.selector")),
    ("InferencePool", _set("spec.endpointPickerRef.failureMode", "FailSometimes")),
    ("InferencePool", _set("spec.endpointPickerRef.prot", {"number": 9002})),  # a typo
    ("HTTPRoute", _delete("spec.rules.0.backendRefs.0.name")),
    ("HTTPRoute", _set("spec.parentRefs.0.kind", "")),
    ("HTTPRoute", _set("spec.rules.0.matches.0.path.type", "Prefix")),
    ("LeaderWorkerSet", _set("spec.leaderWorkerTemplate.size", "two")),
    ("LeaderWorkerSet", _set("spec.leaderWorkerTemplate.restartPolicy", "Always")),
    ("LeaderWorkerSet", _set("spec.leaderWorkerTemplate.sizee", 2)),  # a typo
], ids=lambda p: p if isinstance(p, str) else "")
def test_a_broken_cr_fails_its_schema(multi_all: list[Obj], kind: str,
                                      change: Callable[[Obj], None]) -> None:
    broken = json.loads(json.dumps(one(multi_all, kind)))
    change(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, cr_schema(kind))


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("role", ["leaderTemplate", "workerTemplate"])
def test_each_lws_pod_template_is_a_valid_kubernetes_pod_template(multi_all: list[Obj],
                                                                 role: str,
                                                                 version: str) -> None:
    template = one(multi_all, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"][role]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                  "metadata": {"name": "t"}, "template": template},
                                 version, strict=True)
    for obj in multi_all:
        if obj["kind"] not in ("LeaderWorkerSet", "InferencePool", "HTTPRoute"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_pool_selects_the_pods_on_the_serving_port_with_vllm_metric_names(
        rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["pool"]
    pool = one(objects, "InferencePool")
    template = pod_template(objects)
    assert pool["spec"]["selector"]["matchLabels"].items() <= template["metadata"][
        "labels"].items()
    assert pool["spec"]["targetPorts"] == [{"number": container(objects)["ports"][0][
        "containerPort"]}]
    assert template["metadata"]["labels"][ENGINE_TYPE] == "vllm"
    picker = ci_values("inference-pool")["inferencePool"]["endpointPicker"]
    assert pool["spec"]["endpointPickerRef"] == {"name": picker["name"], "port": {"number": 9002},
                                                 "failureMode": "FailClose"}
    # A different serving port moves the pool's target port with the container's.
    moved = render(CHART, *POOL, "--set", "server.port=9000")
    assert one(moved, "InferencePool")["spec"]["targetPorts"] == [{"number": 9000}]
    assert container(moved)["ports"][0]["containerPort"] == 9000
    for name in ("default", "cpu", "gpu", "multi"):  # off by default: no label, no pool
        assert ENGINE_TYPE not in pod_template(rendered[name])["metadata"]["labels"]
        assert "InferencePool" not in kinds(rendered[name])


def test_the_route_sends_the_gateways_requests_to_the_pool(
        rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["pool"]
    route = one(objects, "HTTPRoute")["spec"]
    gateway = ci_values("inference-pool")["inferencePool"]["httpRoute"]["gateway"]
    assert route["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                    "name": gateway}]
    (rule,) = route["rules"]
    assert rule["backendRefs"] == [{
        "group": "inference.networking.k8s.io", "kind": "InferencePool",
        "name": one(objects, "InferencePool")["metadata"]["name"]}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    done = helm("template", "lokal", str(CHART), *POOL, "--set",
                "inferencePool.httpRoute.gateway=")
    assert done.returncode != 0 and "inferencePool.httpRoute.gateway" in done.stderr


@pytest.mark.parametrize(("tensor", "pipeline"), [(2, 1), (2, 2), (1, 2), (8, 1)])
def test_tensor_and_pipeline_parallel_ask_for_their_gpus_and_tell_vllm(tensor: int,
                                                                       pipeline: int) -> None:
    objects = render(CHART, *POOL, "--set", f"vllm.parallel.tensor={tensor}",
                     "--set", f"vllm.parallel.pipeline={pipeline}", "--set", "gpu.shmSize=16Gi",
                     "--set", "vllm.nccl.NCCL_P2P_DISABLE=1")
    assert container(objects)["resources"]["limits"][GPU_RESOURCE] == tensor * pipeline
    args = model_spec(objects)["vllm"]["engine_args"]
    assert args == {"tensor_parallel_size": tensor, "pipeline_parallel_size": pipeline,
                    "gpu_memory_utilization": 0.9}  # the model's own args kept
    assert named(pod(objects)["volumes"], "dshm")["emptyDir"] == {"medium": "Memory",
                                                                "sizeLimit": "16Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(objects)["volumeMounts"]
    assert env(objects)["NCCL_DEBUG"]["value"] == "WARN"
    assert env(objects)["NCCL_P2P_DISABLE"]["value"] == "1"


def test_no_split_leaves_the_gpu_count_and_the_engine_args_alone(
        rendered: dict[str, list[Obj]]) -> None:
    assert container(rendered["gpu"])["resources"]["limits"][GPU_RESOURCE] == 1
    args = model_spec(rendered["gpu"])["vllm"]["engine_args"]
    assert "tensor_parallel_size" not in args and "pipeline_parallel_size" not in args
    two = render(CHART, *VALUE_SETS["gpu"], "--set", "gpu.count=2")
    assert container(two)["resources"]["limits"][GPU_RESOURCE] == 2


def test_multinode_groups_of_nodes_with_their_gpus_and_ray(rendered: dict[str, list[Obj]]) -> None:
    values = ci_values("multinode")
    nodes, tensor = values["vllm"]["multiNode"]["nodes"], values["vllm"]["parallel"]["tensor"]
    group = one(rendered["multi"], "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    assert group["size"] == nodes
    assert group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = (group[r]["spec"] for r in ("leaderTemplate", "workerTemplate"))
    for spec in (leader, worker):
        (c,) = spec["containers"]
        assert c["resources"]["limits"][GPU_RESOURCE] == tensor  # per node
        assert named(spec["volumes"], "dshm")["emptyDir"] == {
            "medium": "Memory", "sizeLimit": values["gpu"]["shmSize"]}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        variables = {e["name"]: e for e in c["env"]}
        assert variables["NCCL_SOCKET_IFNAME"]["value"] == "eth0"
        assert variables["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
        assert spec["runtimeClassName"] == "nvidia"
    script = leader["containers"][0]["command"][2]
    assert f"ray start --head --port=6379 --num-gpus={tensor}" in script
    assert f'-ge {nodes} ]' in script  # waits for the whole group to join
    assert script.endswith('exec lokal serve "$@"')
    assert leader["containers"][0]["args"][:6] == ["--config", "/etc/lokal/model.yaml",
                                                   "--backend", "vllm", "--port", "8000"]
    (worker_args,) = worker["containers"][0]["args"]
    assert worker_args == (f"ray start --address=$(LWS_LEADER_ADDRESS):6379 --num-gpus={tensor}"
                           " --block")
    assert leader["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "readinessProbe" not in worker["containers"][0]
    assert "ports" not in worker["containers"][0]
    assert model_spec(rendered["multi"])["vllm"]["engine_args"] == {
        "tensor_parallel_size": tensor, "pipeline_parallel_size": nodes,
        "distributed_executor_backend": "ray"}


@pytest.mark.parametrize("role", ["leader", "worker"])
def test_the_lws_commands_are_valid_shell(rendered: dict[str, list[Obj]], role: str) -> None:
    group = one(rendered["multi"], "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    (c,) = group[f"{role}Template"]["spec"]["containers"]
    command = [*c["command"], *c["args"]]
    assert command[:2] == ["sh", "-c"]
    # Kubernetes expands $(LWS_LEADER_ADDRESS) before the shell runs.
    script = command[2].replace("$(LWS_LEADER_ADDRESS)", "lokal-0.lokal")
    done = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    snippets = re.findall(r"python -c '([^']*)'", script)  # the leader's wait for its workers
    assert len(snippets) == (role == "leader")
    for code in snippets:
        compile(code, "<leader>", "exec")


def _lws_pod_labels(template: Obj, index: int) -> dict[str, str]:
    """A template's labels plus the worker index the LWS controller adds to each pod."""
    return {**template["metadata"]["labels"], LWS_WORKER_INDEX: str(index)}


def test_multinode_serves_from_the_leaders_only(multi_all: list[Obj]) -> None:
    group = one(multi_all, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    leader = _lws_pod_labels(group["leaderTemplate"], 0)
    workers = [_lws_pod_labels(group["workerTemplate"], i) for i in range(1, group["size"])]
    for selector in (one(multi_all, "Service")["spec"]["selector"],
                     one(multi_all, "InferencePool")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= leader.items()
        assert not any(selector.items() <= w.items() for w in workers)
    assert group["leaderTemplate"]["metadata"]["labels"][ENGINE_TYPE] == "vllm"
    assert ENGINE_TYPE not in group["workerTemplate"]["metadata"]["labels"]
    pool = one(multi_all, "InferencePool")["spec"]
    assert pool["targetPorts"] == [{"number": container(multi_all)["ports"][0]["containerPort"]}]


def test_multinode_scales_by_groups_and_shares_the_model_volume(multi_all: list[Obj]) -> None:
    lws = one(multi_all, "LeaderWorkerSet")
    assert "replicas" not in lws["spec"]  # the HPA owns it
    target = one(multi_all, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                      "name": lws["metadata"]["name"]}
    claim = one(multi_all, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    group = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        spec = group[role]["spec"]
        assert named(spec["volumes"], "models")["persistentVolumeClaim"]["claimName"] == claim[
            "metadata"]["name"]
        (c,) = spec["containers"]
        assert {e["name"]: e.get("value") for e in c["env"]}["HF_HOME"] == "/models/huggingface"
    assert workload(multi_all)["kind"] == "LeaderWorkerSet"
    assert "Deployment" not in kinds(multi_all)


@pytest.mark.parametrize(("values", "message"), [
    (("--set", "vllm.parallel.tensor=2"), "need gpu.enabled"),
    ((*MULTI, "--set", "gpu.enabled=false"), "need gpu.enabled"),
    (("--set", "gpu.enabled=true", "--set", "vllm.multiNode.enabled=true"), "model.vllm"),
    ((*MULTI, "--set", "backend=llamacpp"), "cannot be llamacpp"),
    ((*MULTI, "--set", "vllm.parallel.pipeline=2"), "leave vllm.parallel.pipeline at 1"),
    ((*MULTI, "--set", "vllm.multiNode.nodes=1"), "schema"),
])
def test_settings_that_cannot_serve_fail_to_render(values: tuple[str, ...],
                                                   message: str) -> None:
    done = helm("template", "lokal", str(CHART), *values)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_the_readme_names_only_values_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Scaling out"):]
    section = section[:section.index("\n## ")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    roots = ("inferencePool", "vllm", "autoscaling", "gpu", "podDisruptionBudget", "strategy",
             "storage", "replicaCount")
    pattern = "`((?:" + "|".join(roots) + r")(?:\.\w+)*)"
    named_values = set(re.findall(pattern, section))
    assert len(named_values) > 10
    for path in named_values:
        node: Any = values
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f"README names {path}"
            node = node[key]
    # The HPA's default metric is the name the README's adapter rule exposes.
    metric = values["autoscaling"]["requestsWaiting"]["metricName"]
    assert f'as: "{metric}"' in section
    assert "seriesQuery: 'vllm:num_requests_waiting" in section
