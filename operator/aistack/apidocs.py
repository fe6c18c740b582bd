"""Generate the API reference (docs/api.md) from the CRDs, i.e. from the API models.

    python -m aistack.apidocs > docs/api.md      (make docs)

One section per object in the schema (``spec``, ``spec.models[]``, ...), each a table of
its fields with type, default and description, followed by the rules the API server
enforces (CEL). A unit test fails when docs/api.md differs from what this prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from aistack.crd import all_crds

Schema = dict[str, Any]

HEADER = """\
# API reference: `aistack.dev/v1alpha1`

Generated from the CRDs (themselves generated from the pydantic models in
`operator/aistack/api/v1alpha1.py`) by `python -m aistack.apidocs` (`make docs`). Do not
edit: a test fails when this file is stale.

Fields marked **required** must be set; every other field may be left out and then takes
its default, if it has one. `kubectl explain aistack.spec --recursive` shows the same
fields from the cluster.
"""


def _anchor(path: str) -> str:
    return "".join(c for c in path.lower().replace(".", "-") if c.isalnum() or c == "-")


def _is_object(node: Schema) -> bool:
    return node.get("type") == "object" and "properties" in node


def _child_object(node: Schema) -> Schema | None:
    """The object a field leads to: itself, its items, or its map values."""
    if _is_object(node):
        return node
    for key in ("items", "additionalProperties"):
        sub = node.get(key)
        if isinstance(sub, dict) and _is_object(sub):
            return sub
    return None


def _child_path(path: str, name: str, node: Schema) -> str:
    full = f"{path}.{name}" if path else name
    if node.get("type") == "array":
        return f"{full}[]"
    if isinstance(node.get("additionalProperties"), dict):
        return f"{full}{{}}"
    return full


def _type(node: Schema, child: str | None) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = str(node.get("type", "any"))
    link = f"[object](#{_anchor(child)})" if child else "object"
    if kind == "array":
        return f"array of {link if child else _type(node.get('items', {}), None)}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        values = link if child else _type(node["additionalProperties"], None)
        return f"map of string to {values}"
    if kind == "object" and node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    return link if kind == "object" else kind


def _bounds(node: Schema) -> list[str]:
    out = []
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None:
        out.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {low}")
    if high is not None:
        out.append(f"{'<' if node.get('exclusiveMaximum') else '≤'} {high}")
    return out


def _lengths(node: Schema) -> list[str]:
    if "minLength" in node and "maxLength" in node:
        return [f"{node['minLength']} to {node['maxLength']} characters"]
    if "maxLength" in node:
        return [f"at most {node['maxLength']} characters"]
    if "minLength" in node:
        return [f"at least {node['minLength']} characters"]
    return []


def _list_rules(node: Schema) -> list[str]:
    out = [f"at most {node['maxItems']} items"] if "maxItems" in node else []
    if node.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(f"`{k}`" for k in node.get("x-kubernetes-list-map-keys", []))
        out.append(f"unique by {keys}")
    elif node.get("x-kubernetes-list-type") == "set":
        out.append("unique items")
    return out


def _constraints(node: Schema) -> list[str]:
    out = ["one of " + ", ".join(f"`{v}`" for v in node["enum"])] if "enum" in node else []
    out += _bounds(node) + _lengths(node) + _list_rules(node)
    if "pattern" in node:
        out.append(f"pattern `{node['pattern']}`")
    # A rule on a field that is no object (the objects' rules are listed under them).
    if not _is_object(node):
        rules = node.get("x-kubernetes-validations", [])
        out += [f"rule: {r.get('message') or r['rule']}" for r in rules]
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(node: Schema) -> str:
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'], separators=(', ', ': '))}`"


def _sections(path: str, node: Schema) -> Iterator[tuple[str, Schema]]:
    """Every object in the schema, depth first, in field order."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        child = _child_object(sub)
        if child is not None:
            yield from _sections(_child_path(path, name, sub), child)


def _section(kind: str, path: str, node: Schema) -> list[str]:
    lines = [f'<a id="{_anchor(f"{kind}-{path}")}"></a>', f"### `{path}`", ""]
    if node.get("description"):
        lines += [_cell(node["description"]), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        child = _child_object(sub)
        target = f"{kind}-{_child_path(path, name, sub)}" if child is not None else None
        text = sub.get("description", "")
        if child is not None and not text:
            text = child.get("description", "")
        details = _constraints(sub)
        if isinstance(sub.get("items"), dict) and child is None:
            details += [f"items: {c}" for c in _constraints(sub["items"])]
        if details:
            text = f"{text} ({'; '.join(details)})" if text else "; ".join(details)
        field = f"`{name}`" + (" **required**" if name in required else "")
        lines.append(f"| {field} | {_type(sub, target)} | {_default(sub)} | {_cell(text)} |")
    rules = node.get("x-kubernetes-validations", [])
    if rules:
        lines += ["", "Rules:", ""]
        lines += [f"- {_cell(r.get('message') or r['rule'])} (`{_cell(r['rule'])}`)" for r in rules]
    return [*lines, ""]


def render() -> str:
    out = [HEADER]
    crds = [c for c in all_crds().values() if c["spec"]["group"] == "aistack.dev"]
    for crd in crds:
        kind = crd["spec"]["names"]["kind"]
        schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out.append(
            f"- [{kind}](#{_anchor(kind)}): "
            + ", ".join(
                f"[`{path}`](#{_anchor(f'{kind}-{path}')})"
                for part in ("spec", "status")
                for path, _ in _sections(part, schema["properties"][part])
            )
        )
    out.append("")
    for crd in crds:
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        root: Schema = version["schema"]["openAPIV3Schema"]
        kind = names["kind"]
        out += [
            f"## {kind}",
            "",
            _cell(root.get("description", "")),
            "",
            f"`apiVersion: {crd['spec']['group']}/{version['name']}`, `kind: {kind}`; "
            f"{crd['spec']['scope'].lower()}; plural `{names['plural']}`"
            + (f", short names {', '.join(f'`{s}`' for s in names.get('shortNames', []))}")
            + ".",
            "",
        ]
        rules = root.get("x-kubernetes-validations", [])
        if rules:
            out += ["Rules on the whole object:", ""]
            out += [f"- {_cell(r['message'])} (`{_cell(r['rule'])}`)" for r in rules]
            out.append("")
        for part in ("spec", "status"):
            for path, node in _sections(part, root["properties"][part]):
                out += _section(kind, path, node)
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
