"""The package's layers (docs/architecture.md): imports point one way, down, and no module
imports itself back through another. Read from the source with ``ast`` (nothing is
imported), type-only imports included: `pytest tests/test_layers.py` is the check."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "operator" / "aistack"

#: The renderer: the whole stack, one module per part, what they share.
RENDER = {
    "aistack.render", "aistack.render.stack", "aistack.render.common", "aistack.render.models",
    "aistack.render.ray", "aistack.render.mlflow", "aistack.render.gateway",
    "aistack.render.network", "aistack.render.disruption", "aistack.render.monitoring",
    "aistack.render.autoscaling",
}  # fmt: skip

#: The license decision: the package and its modules.
LICENSES = {
    "aistack.licenses", *(f"aistack.licenses.{m}" for m in (
        "catalog", "spdx", "resolution", "policy", "providers", "decision", "admission",
    )),
}  # fmt: skip

#: Bottom to top. A module imports modules of its own layer or below, never above.
LAYERS: dict[str, set[str]] = {
    # Vocabulary with no knowledge of stacks: names, limits, errors, YAML, image
    # references, vLLM's flag table, certificates, the verdict type, the packing of cached
    # objects and merge patches; the S3 fetch script runs inside pods.
    "leaves": {
        "aistack", "aistack.names", "aistack.limits", "aistack.errors", "aistack.yamlio",
        "aistack.images", "aistack.vllm_flags", "aistack.certs", "aistack.verdicts",
        "aistack.codec",
        "aistack.render.fetch_s3",
    },
    # The API: what a user writes (AIStack, LicensePolicy) and its rules.
    "api": {"aistack.api", "aistack.api.rules", "aistack.api.v1alpha1"},
    # Built on the API, knowing nothing of parts: conditions, the kinds the operator
    # touches, its metrics, the CRDs and their docs, the Hugging Face Hub client.
    "vocabulary": {
        "aistack.conditions", "aistack.kinds", "aistack.metrics", "aistack.crd",
        "aistack.apidocs", "aistack.hub",
    },
    # The registry of parts: what each part is, and the installation's settings for them.
    "registry": {"aistack.components"},
    # The pure core: manifests, licenses, status, the plan, the chart's generated values.
    "core": {
        *RENDER, *LICENSES, "aistack.status", "aistack.plan", "aistack.chartgen",
        "aistack.migration",
    },
    # Reconcile and the API client: the only I/O below the wiring.
    "reconcile": {"aistack.kube", "aistack.settings", "aistack.controller", "aistack.queue"},
    # Wiring: kopf's handlers and the command line.
    "wiring": {"aistack.handlers", "aistack.cli"},
}  # fmt: skip

#: Pairs inside a layer that must not meet either: the layer that reports never reads the
#: layer that writes manifests, nor the decision's module (only its verdict type).
FORBIDDEN: set[tuple[str, str]] = {
    *{("aistack.status", m) for m in RENDER | LICENSES},
    *{(r, m) for r in RENDER for m in LICENSES},
    *{(m, r) for m in LICENSES for r in RENDER},
    *{(m, "aistack.status") for m in LICENSES},
    # One part's renderer does not reach into another's: what they share is in common.
    *{
        (a, b)
        for a in RENDER - {"aistack.render", "aistack.render.stack"}
        for b in RENDER - {"aistack.render.common"}
        if a != b
    },
    # Inside the license decision, the face hands names on and nothing imports it.
    *{(m, "aistack.licenses") for m in LICENSES - {"aistack.licenses"}},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


#: aistack/data holds files the operator ships to other programs (the gateway's hold runs
#: inside LiteLLM): data of the operator, not modules of it.
MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE / "data"}


def imports(path: Path) -> Iterator[str]:
    """Every aistack module that ``path`` imports, type-only imports too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aistack"):
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found = [s for s in subs if s in MODULES]
            # `from aistack.api import rules` imports a module, not the package's face.
            yield from found if len(found) == len(subs) else [node.module, *found]
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("aistack"))


GRAPH = {m: {d for d in imports(p) if d != m} for m, p in MODULES.items()}
LAYER_OF = {m: i for i, (_, ms) in enumerate(LAYERS.items()) for m in ms}


def test_every_module_has_a_layer() -> None:
    assert set(MODULES) == set(LAYER_OF), "put a new module in a layer (and the docs)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    names = list(LAYERS)
    up = [
        f"{d} ({names[LAYER_OF[d]]})"
        for d in sorted(GRAPH[module])
        if d in LAYER_OF and LAYER_OF[d] > LAYER_OF[module]
    ]
    assert up == [], f"{module} ({names[LAYER_OF[module]]}) imports from above"
    assert [d for d in GRAPH[module] if (module, d) in FORBIDDEN] == []


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back() -> None:
    # A package's face importing its own modules is not a circle of the code.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    assert circles(graph) == []


def test_the_check_sees_a_circle_and_an_upward_import() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert LAYER_OF["aistack.status"] < LAYER_OF["aistack.controller"]
    assert "aistack.components" in GRAPH["aistack.status"]
