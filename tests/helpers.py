"""Small builders shared by the unit tests."""

from __future__ import annotations

import copy
import functools
import gzip
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from aistack.api import AIStack
from aistack.names import speculative_key

ROOT = Path(__file__).resolve().parent.parent
#: The example stacks (examples/ also holds a LicensePolicy).
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "kind: AIStack" in p.read_text())


def stack_doc(name: str = "demo", namespace: str = "ml", **spec: Any) -> dict[str, Any]:
    spec.setdefault("models", [{"name": "m", "source": "org/model"}])
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": name, "namespace": namespace},
        "spec": copy.deepcopy(spec),
    }


def stack(name: str = "demo", namespace: str = "ml", **spec: Any) -> AIStack:
    return AIStack.model_validate(stack_doc(name, namespace, **spec))


def example(path: Path) -> AIStack:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "AIStack"]
    assert len(docs) == 1, f"{path} should hold exactly one AIStack"
    return AIStack.model_validate(docs[0])


def all_permitted(s: AIStack) -> dict[str, bool]:
    """Every route of the stack permitted: its models, their adapters, its providers."""
    names = [n for m in s.spec.models for n in [m.name, *(a.name for a in m.adapters)]]
    names += [p.name for p in s.spec.gateway.providers]
    names += [speculative_key(m.name) for m in s.spec.models if m.speculative is not None]
    return dict.fromkeys(names, True)


def policy(name: str = "team", **spec: Any) -> dict[str, Any]:
    """A LicensePolicy object named ``name`` with ``spec``."""
    return {"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def _kube_minor() -> str:
    versions = (ROOT / "hack" / "versions.env").read_text()
    match = re.search(r"^KUBE_VERSION=v1\.(\d+)\.", versions, re.M)
    assert match, "hack/versions.env names no KUBE_VERSION"
    return match.group(1)


#: The Kubernetes version whose schemas the rendered objects are validated against: the
#: local control plane's minor (hack/versions.env), as kubernetes-validate names it.
K8S_VERSION = f"1.{_kube_minor()}.0"


def by_name(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The objects of one kind, by name."""
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def trusting_policy(**spec: Any) -> dict[str, Any]:
    """The built-in default policy (named ``default``), but trusting a license that only the
    stack declares for Hugging Face repos too (``unverified.huggingFace: Trust``): for tests
    about something else than verification, whose repos no catalog knows."""
    text = (ROOT / "operator" / "aistack" / "data" / "default-licensepolicy.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    doc["spec"]["unverified"] = {"huggingFace": "Trust", "storage": "Trust"}
    doc["spec"].update(spec)
    return doc


def lws_pod(manifests: list[dict[str, Any]], lws: str, role: str) -> dict[str, Any]:
    """The pod spec of a LeaderWorkerSet's leaders or workers (``role``)."""
    (found,) = [
        m for m in manifests if m["kind"] == "LeaderWorkerSet" and m["metadata"]["name"] == lws
    ]
    spec: dict[str, Any] = found["spec"]["leaderWorkerTemplate"][f"{role}Template"]["spec"]
    return spec


#: LeaderWorkerSet's CRD, as the sigs.k8s.io/lws module of the version the e2e suite runs
#: ships it (hack/versions.env LWS_VERSION; tests/e2e/test_lws.py holds the copy equal to
#: what the local cluster installs from the module).
LWS_CRD = ROOT / "tests" / "schemas" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml.gz"
#: KEDA's ScaledObject CRD, as github.com/kedacore/keda/v2 v2.21.1 ships it
#: (config/crd/bases), the release the docs tell users to install.
KEDA_CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml.gz"
#: The CRDs rendered kinds are checked against: (kind, apiVersion) -> (file, version).
CRD_SCHEMAS = {
    ("LeaderWorkerSet", "leaderworkerset.x-k8s.io/v1"): (LWS_CRD, "v1"),
    ("ScaledObject", "keda.sh/v1alpha1"): (KEDA_CRD, "v1alpha1"),
}


@functools.cache
def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    """The openAPIV3Schema of a kind the render makes from another project's CRD."""
    path, version = CRD_SCHEMAS[(kind, api_version)]
    crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=yaml.CSafeLoader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Fields the API server would prune (a structural schema: ``properties`` lists every
    field an object may have, unless it preserves unknown fields)."""
    out: list[str] = []
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                out += _unknown_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                out += _unknown_fields(v, extra, f"{path}.{k}")
            elif props is not None:
                out.append(f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += _unknown_fields(v, schema["items"], f"{path}[{i}]")
    return out


def validate_manifest(manifest: dict[str, Any]) -> None:
    """A rendered object as the API server would check it: built-in kinds against
    Kubernetes' schemas (strict), a LeaderWorkerSet or a ScaledObject against its project's
    own CRD (types, and no field the API server would drop). PodMonitors are not checked
    here: the e2e suite has the API server validate them against the Prometheus Operator's
    CRD."""
    if manifest["apiVersion"] == "monitoring.coreos.com/v1":
        return
    key = (manifest["kind"], manifest["apiVersion"])
    if key in CRD_SCHEMAS:
        schema = crd_schema(*key)
        jsonschema.validate(manifest, schema)
        unknown = _unknown_fields(manifest, schema, manifest["metadata"]["name"])
        assert unknown == [], f"fields {key[0]}'s CRD does not have: {unknown}"
        return
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
