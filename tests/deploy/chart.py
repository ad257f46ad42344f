"""What the chart tests share: the chart's value sets, finding the serving pod in what was
rendered (a Deployment's, or a LeaderWorkerSet leader's), and the vendored CRD schemas."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import REPO

CHART = REPO / "helm"
CI = CHART / "ci"
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "cpu": ("-f", str(CI / "cpu-values.yaml")),
    "gpu": ("-f", str(CI / "gpu-values.yaml")),
    "pool": ("-f", str(CI / "inference-pool-values.yaml")),
    "multi": ("-f", str(CI / "multinode-values.yaml")),
}
CRDS = REPO / "tests" / "deploy" / "crds"
CR_SCHEMAS = {"InferencePool": "inferencepool-v1.json", "HTTPRoute": "httproute-v1.json",
              "LeaderWorkerSet": "leaderworkerset-v1.json"}
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"

Obj = dict[str, Any]


def one(objects: list[Obj], kind: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def named(items: list[Obj], name: str) -> Obj:
    (found,) = [item for item in items if item["name"] == name]
    return found


def kinds(objects: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def workload(objects: list[Obj]) -> Obj:
    """The Deployment, or in multi-node mode the LeaderWorkerSet."""
    (found,) = [o for o in objects if o["kind"] in ("Deployment", "LeaderWorkerSet")]
    return found


def pod_template(objects: list[Obj]) -> Obj:
    """The template of the pods that serve: the Deployment's, or the LWS leaders'."""
    spec = workload(objects)["spec"]
    template: Obj = spec["template"] if "template" in spec else spec["leaderWorkerTemplate"][
        "leaderTemplate"]
    return template


def pod(objects: list[Obj]) -> Obj:
    spec: Obj = pod_template(objects)["spec"]
    return spec


def container(objects: list[Obj]) -> Obj:
    (c,) = pod(objects)["containers"]
    return c


def env(objects: list[Obj]) -> dict[str, Obj]:
    return {e["name"]: e for e in container(objects)["env"]}


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server applies it with strict field validation (kubectl's
    default): an object that lists its properties takes no others, where a structural schema
    would prune them silently."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def cr_schema(kind: str) -> Obj:
    schema: Obj = strict(json.loads((CRDS / CR_SCHEMAS[kind]).read_text()))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is the server's own
    return schema
