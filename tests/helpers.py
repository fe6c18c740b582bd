"""Small builders shared by the unit tests."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

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
