"""Generate the CustomResourceDefinitions from the pydantic API models.

pydantic emits JSON Schema (2020-12); Kubernetes wants a structural OpenAPI v3 schema:
no ``$ref``, no ``null`` branches, no titles, ``anyOf`` only for int-or-string, boolean
``exclusiveMinimum``. :func:`structural` does that conversion; everything else (CEL rules,
list types, defaults) is carried over from the models' own ``json_schema_extra``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from aistack.api import rules
from aistack.api.v1alpha1 import (
    GROUP,
    VERSION,
    AIStack,
    AIStackSpec,
    AIStackStatus,
    LicensePolicy,
    LicensePolicySpec,
    LicensePolicyStatus,
)
from aistack.yamlio import dump

Schema = dict[str, Any]

_DROP = {"title", "additionalProperties", "$defs"}


class SchemaError(ValueError):
    """A model uses a construct that has no structural-schema equivalent."""


def _describe(text: str) -> str:
    # Docstrings use reST literals; kubectl explain shows plain text.
    return re.sub(r"``([^`]+)``", r"`\1`", " ".join(text.split()))


def _merged(node: Schema, defs: dict[str, Schema]) -> Schema | None:
    """A ``$ref`` resolved, or an ``anyOf`` of one type and null, merged with the node's
    own keys; None for any other node."""
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        resolved = structural(target, defs)
        resolved.update(structural(node, defs))
        return resolved
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"cannot express a union of {branches} in a structural schema")
        merged = structural(branches[0], defs)
        merged.update(structural(node, defs))
        return merged
    return None


def _dropped(key: str, value: Any) -> bool:
    """Keys a structural schema has no use for (a null default, what ``_DROP`` names)."""
    if key in _DROP and not (key == "additionalProperties" and isinstance(value, dict)):
        return True
    return key == "default" and value is None


def _structural_key(key: str, value: Any, defs: dict[str, Schema]) -> Schema:
    """One key of a node in structural form (a key may become two, or another)."""
    if key == "description":
        return {key: _describe(value)}
    if key == "properties":
        return {key: {name: structural(sub, defs) for name, sub in value.items()}}
    if key in ("items", "additionalProperties"):
        return {key: structural(value, defs)}
    if key == "const":
        return {"enum": [value]}
    if key in ("exclusiveMinimum", "exclusiveMaximum"):
        bound = "minimum" if key == "exclusiveMinimum" else "maximum"
        return {bound: value, key: True}
    return {key: value}


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Convert one pydantic JSON Schema node (and its children) to a structural schema."""
    node = dict(schema)
    merged = _merged(node, defs)
    if merged is not None:
        return merged
    out: Schema = {}
    for key, value in node.items():
        if not _dropped(key, value):
            out.update(_structural_key(key, value, defs))
    if "properties" in out:
        out.setdefault("type", "object")
    first = [k for k in ("description", "type") if k in out]
    return {k: out[k] for k in first + sorted(k for k in out if k not in first)}


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _root_schema(
    kind_model: type[BaseModel],
    spec: type[BaseModel],
    status: type[BaseModel],
    root_rules: list[tuple[str, str]],
) -> Schema:
    schema: Schema = {
        "type": "object",
        "description": _describe(kind_model.__doc__ or ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(spec),
            "status": model_schema(status),
        },
    }
    if root_rules:
        schema["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in root_rules]
    return schema


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    scope: str,
    schema: Schema,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "aistack"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def aistack_crd() -> dict[str, Any]:
    return _crd(
        kind="AIStack",
        plural="aistacks",
        short_names=["ais"],
        scope="Namespaced",
        schema=_root_schema(AIStack, AIStackSpec, AIStackStatus, rules.ROOT_CEL_RULES),
        columns=[
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Models", "type": "string", "jsonPath": ".status.modelsReady"},
            {"name": "Gateway", "type": "string", "jsonPath": ".status.endpoints.gateway"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {
                "name": "Reason",
                "type": "string",
                "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
        ],
    )


def license_policy_crd() -> dict[str, Any]:
    return _crd(
        kind="LicensePolicy",
        plural="licensepolicies",
        short_names=["lpol"],
        scope="Cluster",
        schema=_root_schema(LicensePolicy, LicensePolicySpec, LicensePolicyStatus, []),
        columns=[
            {"name": "Enforcement", "type": "string", "jsonPath": ".spec.enforcement"},
            {"name": "Unknown", "type": "string", "jsonPath": ".spec.unknown"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def kopf_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering resources, through which operator replicas elect the active one."""
    out = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = f"{kind.lower()}s"
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": f"{plural}.kopf.dev",
                    "labels": {"app.kubernetes.io/part-of": "aistack"},
                },
                "spec": {
                    "group": "kopf.dev",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "scope": scope,
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in ``crds/`` -> CRD."""
    crds = [aistack_crd(), license_policy_crd(), *kopf_peering_crds()]
    return {f"{c['spec']['group']}_{c['spec']['names']['plural']}.yaml": c for c in crds}


def crd_files() -> dict[str, str]:
    header = "# Generated by `aistack crds` from the API models. Do not edit.\n"
    return {name: header + dump(crd) for name, crd in all_crds().items()}
