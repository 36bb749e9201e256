"""The DaskCluster that ``KubeCluster`` makes from its arguments, checked
against the CRD's own schema (``crds/daskcluster.yaml``, generated from the
operator's types) the way the API server checks a structural schema: types,
required fields, enums, minimums, and no field the schema does not know
(the API server would silently prune it, and the setting would be lost).

The cluster side of ``KubeCluster`` (create, wait, port forward, scale,
close) runs against a real API server in the end-to-end test
(``client/tests/kube_python.rs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from daskrs import make_cluster_spec
from daskrs._kube import MAX_NAME, load_spec

REPO = Path(__file__).resolve().parents[2]


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds/daskcluster.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def violations(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Where ``value`` breaks ``schema`` (an OpenAPI v3 structural schema)."""
    out: list[str] = []
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is neither an integer nor a string"]
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is not None and not checks[kind](value):
        return [f"{path}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{path}: {value!r} is below {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{path}.{key}: required")
        for key, item in value.items():
            if key in props:
                out += violations(item, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += violations(item, schema["additionalProperties"], f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{path}.{key}: not a field of the schema")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += violations(item, schema["items"], f"{path}[{i}]")
    return out


def check(manifest: dict[str, Any]) -> None:
    schema = crd_schema()
    # apiVersion, kind and metadata are the API server's own; the rest is
    # the CRD's.
    assert (manifest["apiVersion"], manifest["kind"]) == ("daskrs.dev/v1alpha1", "DaskCluster")
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    assert violations(body, schema) == []


def test_the_schema_check_finds_what_the_api_server_would_refuse_or_prune() -> None:
    schema = crd_schema()
    assert violations({"spec": {"worker": {"replica": 2}}}, schema) == [
        ".spec.worker.replica: not a field of the schema"
    ]
    assert violations({"spec": {}}, schema) == [".spec.worker: required"]
    assert violations({"spec": {"worker": {"replicas": "2"}}}, schema) == [
        ".spec.worker.replicas: '2' is not of type integer"
    ]


def test_the_smallest_spec_is_the_example_cluster() -> None:
    manifest = make_cluster_spec("demo")
    check(manifest)
    example = yaml.safe_load((REPO / "examples/cluster.yaml").read_text())
    assert manifest == example


def test_every_argument_lands_in_the_field_the_operator_reads() -> None:
    manifest = make_cluster_spec(
        "analytics",
        n_workers=5,
        image="registry.example/team/daskrs-python:1.2",
        resources={"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        scheduler_resources={"requests": {"cpu": "500m"}},
        env={"OMP_NUM_THREADS": 1, "TEAM": "geo"},
        threads_per_worker=2,
        memory_limit="6Gi",
        s3={
            "endpoint": "http://minio.storage:9000",
            "region": "eu-west-1",
            "max_concurrency": 32,
            "credentials_secret": {"name": "s3", "access_key_id_key": "id"},
        },
        tls=False,
        idle_timeout="30m",
        labels={"team": "geo"},
    )
    check(manifest)
    spec = manifest["spec"]
    worker = spec["worker"]
    assert worker["replicas"] == 5
    assert worker["threads"] == 2
    assert worker["memoryLimit"] == "6Gi"
    assert worker["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    env = [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "TEAM", "value": "geo"}]
    assert worker["env"] == env and spec["scheduler"]["env"] == env
    assert spec["scheduler"]["resources"] == {"requests": {"cpu": "500m"}}
    assert worker["labels"] == spec["scheduler"]["labels"] == {"team": "geo"}
    assert spec["image"] == "registry.example/team/daskrs-python:1.2"
    assert spec["s3"] == {
        "endpoint": "http://minio.storage:9000",
        "region": "eu-west-1",
        "maxConcurrency": 32,
        "credentialsSecret": {"name": "s3", "accessKeyIdKey": "id"},
    }
    assert spec["tls"] == {"enabled": False}
    assert spec["idleTimeout"] == "30m"
    # A Secret named by its name alone.
    named = make_cluster_spec("a", s3={"credentials_secret": "s3-keys"})
    check(named)
    assert named["spec"]["s3"] == {"credentialsSecret": {"name": "s3-keys"}}
    # Environment entries in the Kubernetes form pass through (valueFrom).
    from_secret = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}]
    check(make_cluster_spec("a", env=from_secret))


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"name": "Demo"}, "cluster name 'Demo'"),
        ({"name": "a_b"}, "cluster name 'a_b'"),
        ({"name": "x" * (MAX_NAME + 1)}, f"at most {MAX_NAME}"),
        ({"n_workers": -1}, "n_workers"),
        ({"n_workers": 1.5}, "n_workers"),
        ({"threads_per_worker": 0}, "threads_per_worker"),
        ({"memory_limit": 1.5}, "memory_limit"),
        ({"resources": {"request": {"cpu": 1}}}, "not request"),
        ({"s3": {"bucket": "x"}}, "not bucket"),
        ({"s3": {"max_concurrency": 0}}, "max_concurrency"),
        ({"env": [{"value": "x"}]}, "env entries"),
        ({"image": ""}, "image"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], names: str) -> None:
    kwargs = {"name": "ok", **kwargs}
    with pytest.raises(ValueError, match=names.replace("(", r"\(").replace("[", r"\[")):
        make_cluster_spec(kwargs.pop("name"), **kwargs)


def test_a_yaml_spec_from_a_file_or_text(tmp_path: Path) -> None:
    for example in sorted((REPO / "examples").glob("cluster*.yaml")):
        manifest = load_spec(example)
        check(manifest)
    text = "kind: DaskCluster\nmetadata: {name: x}\nspec:\n  worker: {replicas: 3}\n"
    manifest = load_spec(text)
    assert manifest["apiVersion"] == "daskrs.dev/v1alpha1"
    assert manifest["spec"]["worker"]["replicas"] == 3
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_spec(path) == manifest
    with pytest.raises(ValueError, match="not a DaskCluster"):
        load_spec("kind: Deployment\nspec: {worker: {}}\n")
    with pytest.raises(ValueError, match="spec.worker"):
        load_spec("kind: DaskCluster\nspec: {}\n")
    with pytest.raises(ValueError, match="not YAML"):
        load_spec("spec: [\n")


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def test_what_waiting_cannot_fix_is_named_and_pending_pods_say_why() -> None:
    from daskrs._kube import _pending, _pod_problem

    waiting = {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
    pulled = pod("w-1", containerStatuses=[{"image": "reg/x:1", **waiting}])
    assert _pod_problem([pod("s", phase="Running"), pulled]) == (
        "pod w-1 cannot pull its image (ImagePullBackOff, image reg/x:1): not found"
    )
    crashing = {
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2}},
    }
    assert "keeps crashing (restarted 3 times, last exit code 2)" in (
        _pod_problem([pod("w-2", containerStatuses=[crashing])]) or ""
    )
    # A first crash may be the scheduler not being up yet: not fatal.
    once = {**crashing, "restartCount": 1}
    assert _pod_problem([pod("w-3", containerStatuses=[once])]) is None
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu.",
    }
    pending = [pod(f"w-{i}", phase="Pending", conditions=[unschedulable]) for i in range(2)]
    assert _pending(pending + [pod("s", phase="Running")]) == (
        "; 2 pods Pending (Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.)"
    )
