"""A new part of a stack takes the four hand-edited files docs/adding-a-component.md
lists, and nothing else: in a copy of the package, a throwaway part ("echo", a Deployment
and a Service) is added with exactly those edits, and render, the NetworkPolicies, the
status' conditions, the CLI's image flag and the chart's image values follow from the
registry. When the list of files grows, this test fails, and the doc says so too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "operator" / "aistack"
DOC = ROOT / "docs" / "adding-a-component.md"

#: The hand-edited files, as the doc lists them.
EDITED = [
    "operator/aistack/api/v1alpha1.py",
    "operator/aistack/render/templates/<part>.yaml.j2",
    "operator/aistack/render/<part>.py",
    "operator/aistack/components.py",
]

SPEC = '''

class EchoSpec(APIModel):
    """A throwaway part."""

    enabled: bool = False
    """Create it."""
    image: Image | None = None
    """Its image; the operator's default when empty."""


class AIStackSpec(APIModel):'''

FIELD = '''    """Prometheus monitors for the stack's parts."""
    echo: EchoSpec = Field(default_factory=EchoSpec, json_schema_extra={"default": {}})
    """The throwaway part."""
'''

TEMPLATE = """apiVersion: apps/v1
kind: Deployment
metadata: {{ {"name": name, "namespace": namespace, "labels": labels} | tojson }}
spec:
  replicas: 1
  selector:
    matchLabels: {{ selector | tojson }}
  template:
    metadata:
      labels: {{ labels | tojson }}
    spec:
      containers:
        - name: echo
          image: {{ image | tojson }}
          ports: [{name: http, containerPort: 5678}]
---
apiVersion: v1
kind: Service
metadata: {{ {"name": name, "namespace": namespace, "labels": labels} | tojson }}
spec:
  selector: {{ selector | tojson }}
  ports: [{name: http, port: 5678, targetPort: http}]
"""

MODULE = '''"""The throwaway part."""

from __future__ import annotations

from aistack import names
from aistack.api.v1alpha1 import AIStack, ModelSpec
from aistack.components import RenderConfig, namespace_of
from aistack.render.common import Manifest, fill_template

PART = "echo"


def render_part(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    name = stack.metadata.name
    return fill_template(
        "echo.yaml.j2",
        name=names.part(name, "echo"),
        namespace=namespace_of(stack),
        labels=names.common_labels(name, "echo", "echo"),
        selector=names.selector_labels(name, "echo"),
        image=stack.spec.echo.image or config.images["echo"],
    )
'''

ENTRY = """    Component(
        name="echo",
        title="Echo",
        condition="EchoReady",
        enabled=lambda spec: spec.echo.enabled,
        workloads=lambda stack: [names.part(stack.metadata.name, "echo")],
        pod_selector=lambda stack: names.selector_labels(stack, "echo"),
        endpoints=lambda stack, config: {},
        reached_by=("gateway",),
        port=5678,
        image="echo",
        named_image=lambda spec: spec.echo.image,
        program="echo",
        version="1.0",
        image_template="example.com/echo:{version}",
    ),
)
#: The component that serves the models"""

CHECK = """
import json, sys
import aistack
from aistack.api.v1alpha1 import AIStack
from aistack.chartgen import images_template
from aistack.cli import build_parser
from aistack.render import render
from aistack.status import CONDITION_TYPES

stack = AIStack.model_validate({"apiVersion": "aistack.dev/v1alpha1", "kind": "AIStack",
    "metadata": {"name": "s", "namespace": "ml"},
    "spec": {"models": [], "ray": {"enabled": False}, "echo": {"enabled": True}}})
objs = render(stack, {})
help_text = build_parser().format_help() + "".join(
    a.format_help() for a in build_parser()._subparsers._group_actions[0].choices.values())
print(json.dumps({
    "package": aistack.__file__,
    "objects": sorted([o["kind"], o["metadata"]["name"]] for o in objs),
    "policy": [o["spec"] for o in objs if o["kind"] == "NetworkPolicy"
               and o["metadata"]["name"] == "s-echo"],
    "conditions": list(CONDITION_TYPES),
    "flag": "--echo-image" in help_text,
    "chart": "echo" in images_template(),
}))
"""


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name}: the anchor of the edit moved"
    path.write_text(text.replace(old, new))


def test_the_doc_lists_the_four_hand_edited_files() -> None:
    text = DOC.read_text()
    section = text.split("Hand-edited (four):", 1)[1].split("\n\n", 1)[1].split("\n\n")[0]
    listed = re.findall(r"^\d\. `([^`]+)`", section, re.M)
    assert listed == EDITED


def test_a_new_part_in_four_files(tmp_path: Path) -> None:
    copy = tmp_path / "aistack"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # 1. the API: its spec section
    api = copy / "api" / "v1alpha1.py"
    _edit(api, "\n\nclass AIStackSpec(APIModel):", SPEC)
    _edit(api, '    """Prometheus monitors for the stack\'s parts."""\n', FIELD)
    # 2. its template, 3. its render module
    (copy / "render" / "templates" / "echo.yaml.j2").write_text(TEMPLATE)
    (copy / "render" / "echo.py").write_text(MODULE)
    # 4. its entry in the registry
    _edit(copy / "components.py", ")\n#: The component that serves the models", ENTRY)

    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert Path(got["package"]).parent == copy, "the copy, not the installed package"
    assert ["Deployment", "s-echo"] in got["objects"] and ["Service", "s-echo"] in got["objects"]
    (policy,) = got["policy"]  # reached by the gateway, on its port
    assert policy["ingress"][0]["ports"] == [{"port": 5678, "protocol": "TCP"}]
    assert "EchoReady" in got["conditions"]
    assert got["flag"] and got["chart"]
