"""docs/api.md: generated from the CRD schema, complete, and never stale."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aistack.apidocs import render
from aistack.crd import all_crds

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"


def test_docs_api_md_is_up_to_date(update_goldens: bool) -> None:
    if update_goldens:
        API_MD.write_text(render())
    assert API_MD.read_text() == render(), "docs/api.md is stale: run `make docs`"


def test_the_module_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aistack.apidocs"], capture_output=True, text=True, check=True
    ).stdout
    assert out == render()


def fields(path: str, node: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section path, field name, schema) for every field of every object."""
    for name, sub in node.get("properties", {}).items():
        yield path, name, sub
        suffix = "[]" if sub.get("type") == "array" else ""
        inner = sub.get("items", sub) if suffix else sub
        if isinstance(sub.get("additionalProperties"), dict):
            inner, suffix = sub["additionalProperties"], "{}"
        if "properties" in inner:
            yield from fields(f"{path}.{name}{suffix}", inner)


def sections(text: str) -> dict[str, str]:
    """`### `path`` heading -> the text up to the next heading, per kind."""
    out: dict[str, str] = {}
    kind = ""
    for block in re.split(r"^(?=##+ )", text, flags=re.MULTILINE):
        head = block.splitlines()[0] if block else ""
        if head.startswith("## "):
            kind = head[3:].strip()
        elif head.startswith("### "):
            out[f"{kind} {head[4:].strip().strip('`')}"] = block
    return out


@pytest.mark.parametrize("kind", ["AIStack", "LicensePolicy"])
def test_every_field_with_its_type_default_and_description(kind: str) -> None:
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == kind)
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    docs = sections(API_MD.read_text())
    count = 0
    for part in ("spec", "status"):
        for path, name, schema in fields(part, root["properties"][part]):
            section = docs[f"{kind} {path}"]
            row = next((r for r in section.splitlines() if r.startswith(f"| `{name}`")), None)
            assert row is not None, f"{kind} {path}.{name} is not documented"
            cells = [c.strip() for c in row.split(" | ")]
            expected = {"array": "array of", "object": "object"}.get(schema.get("type", ""))
            if isinstance(schema.get("additionalProperties"), dict):
                expected = "map of string to"
            if schema.get("x-kubernetes-int-or-string"):
                expected = "integer or string"
            assert (expected or schema["type"]) in cells[1], (path, name, cells[1])
            if "default" in schema:
                assert cells[2] == f"`{json.dumps(schema['default'], separators=(', ', ': '))}`"
            if schema.get("description"):
                assert " ".join(schema["description"].split())[:40].replace("|", "\\|") in row
            count += 1
    assert count > (80 if kind == "AIStack" else 15)


def test_every_link_has_its_anchor_and_every_cel_rule_is_listed() -> None:
    text = API_MD.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text)) | {"aistack", "licensepolicy"}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, links - anchors
    for crd in all_crds().values():
        if crd["spec"]["group"] != "aistack.dev":
            continue
        dump = json.dumps(crd)
        for message in re.findall(r'"message": "((?:[^"\\]|\\.)*)"', dump):
            message = json.loads(f'"{message}"')
            if message:
                assert " ".join(message.split()).replace("|", "\\|") in text, message
