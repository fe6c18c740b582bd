"""Facts the docs restate from the code, held to it: each test reads the claim from the
doc and the fact from the code, so a drift on either side fails here (like docs/api.md,
which is generated). Timings and bench figures name the run they come from."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from aistack.api import AIStack
from aistack.licenses import catalog
from aistack.render import render
from aistack.status import CONDITION_TYPES
from bad_inputs import CASES
from helpers import ROOT, all_permitted, example

README = (ROOT / "README.md").read_text()


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_catalog_size_in_the_readme() -> None:
    claimed = re.search(r"(\d+) well-known models", one_line(README))
    assert claimed, "README no longer says how many models the catalog has"
    assert int(claimed.group(1)) == len(catalog())


def test_the_bad_input_counts_in_the_readme() -> None:
    text = one_line(README)
    total = re.search(r"\| bad input \| (\d+) malformed", text)
    api = re.search(r"(\d+) of them are refused by the real API server", text)
    cli = re.search(r"(\d+) are refused by `aistack render`", text)
    assert total and api and cli
    assert int(total.group(1)) == len(CASES)
    assert int(api.group(1)) == sum(c.api is not None for c in CASES)
    assert int(cli.group(1)) == sum(c.cli is not None for c in CASES)


def test_the_readme_lists_every_condition() -> None:
    text = one_line(README)
    listed = re.search(r"Conditions: (.*?), each with a reason", text)
    assert listed
    names = re.findall(r"`(\w+)`", listed.group(1))
    assert names == list(CONDITION_TYPES)


def test_make_help_lists_every_documented_target() -> None:
    make = shutil.which("make")
    assert make
    helped = subprocess.run(
        [make, "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    listed = {line.split()[0] for line in helped.splitlines() if line.strip()}
    documented = set(
        re.findall(r"^([A-Za-z0-9_-]+):[^=\n]*## ", (ROOT / "Makefile").read_text(), re.M)
    )
    assert {"e2e", "gitops", "test", "demo"} <= documented
    assert listed == documented


def test_network_policies_per_stack_in_the_install_docs() -> None:
    install = one_line((ROOT / "docs" / "install.md").read_text())
    claimed = re.search(r"(\d+) for `examples/quickstart.yaml`", install)
    assert claimed, "docs/install.md no longer says how many NetworkPolicies a stack has"
    quickstart = example(ROOT / "examples" / "quickstart.yaml")
    manifests = render(quickstart, all_permitted(quickstart))
    assert int(claimed.group(1)) == sum(m["kind"] == "NetworkPolicy" for m in manifests)


def test_the_bench_stack_in_the_benchmark_docs() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import bench

    doc = one_line((ROOT / "docs" / "benchmarks.md").read_text())
    claimed = re.search(r"today (\d+) children \(([^)]*)\)", doc)
    assert claimed
    words = {"a": 1, "an": 1, "one": 1}
    kinds = {
        "Deployments": "Deployment", "Services": "Service", "NetworkPolicies": "NetworkPolicy",
        "ConfigMap": "ConfigMap", "PVC": "PersistentVolumeClaim",
    }  # fmt: skip
    said = {}
    for part in claimed.group(2).split(","):
        count, noun = part.strip().split(" ", 1)
        said[kinds[noun]] = words.get(count) or int(count)
    stack = AIStack.model_validate(bench.stack_manifest("s", "bench"))
    got = collections.Counter(m["kind"] for m in render(stack, all_permitted(stack)))
    assert said == dict(got)
    assert int(claimed.group(1)) == sum(got.values())


def test_the_readmes_bench_figures_come_from_the_recorded_run() -> None:
    text = one_line(README)
    run = re.search(r'--label (registry-100)"`, `bench/results/registry-100.json`\), 100', text)
    assert run, "README names the run its figures come from"
    result = json.loads((ROOT / "bench" / "results" / f"{run.group(1)}.json").read_text())
    many = result["many"]["100"]
    ratio = many["operator"]["ready"] / many["limit"]["ready"]
    assert f"Ready in {ratio:.2f}x the time of that limit" in text
    rss = many["operator"]["operator_peak_rss_mb"]
    assert f"peaking at {rss:.0f} MB" in text
    date = re.search(r"recorded run \((\d{4}-\d\d-\d\d)", text)
    assert date and result["date"].startswith(date.group(1))
    big = json.loads((ROOT / "bench" / "results" / "memory-1000.json").read_text())
    assert f"peaks at {big['many']['1000']['operator']['operator_peak_rss_mb']:.0f} MB" in text


def test_the_e2e_cluster_default_is_what_the_docs_say() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "AISTACK_E2E_CLUSTER ?= local" in makefile
    hack = one_line((ROOT / "hack" / "README.md").read_text())
    assert "default local, also where Docker works" in hack
    assert "The local cluster is the default, also where Docker runs" in one_line(README)


def test_paths_named_in_the_charts_values_exist() -> None:
    chart = ROOT / "charts" / "aistack-operator"
    text = (chart / "values.yaml").read_text()
    named = set(re.findall(r"(templates/[\w.-]+|files/[\w.-]+)", text))
    assert named, "values.yaml names no template"
    assert [p for p in sorted(named) if not (chart / p).exists()] == []


def test_the_conformance_env_files_are_named_as_the_docs_say() -> None:
    doc = one_line((ROOT / "docs" / "conformance.md").read_text())
    named = re.search(r"\(named by program: ([^)]*)\)", doc)
    assert named
    listed = set(re.findall(r"`([\w-]+)`", named.group(1)))
    files = {p.stem for p in (ROOT / "tests" / "conformance" / "envs").glob("*.txt")}
    assert listed == files


# ---------------------------------------------------------------- the demo's cluster


def _demo_backend(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`hack/demo.sh backend` from a copy of the script (its .demo/ is the copy's)."""
    (tmp_path / "hack").mkdir(exist_ok=True)
    shutil.copy(ROOT / "hack" / "demo.sh", tmp_path / "hack" / "demo.sh")
    return subprocess.run(
        ["bash", str(tmp_path / "hack" / "demo.sh"), "backend"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def test_the_demo_uses_the_local_cluster_even_where_docker_and_kind_work(tmp_path: Path) -> None:
    # A docker and a kind that work, first on PATH: the demo must still pick local.
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("docker", "kind"):
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
        (fake / tool).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k != "AISTACK_DEMO_CLUSTER"}
    env = {**base, "PATH": f"{fake}{os.pathsep}{base['PATH']}"}
    assert _demo_backend(tmp_path, env).stdout.strip() == "local"
    assert _demo_backend(tmp_path, env | {"AISTACK_DEMO_CLUSTER": "kind"}).stdout.strip() == "kind"
    bad = _demo_backend(tmp_path, env | {"AISTACK_DEMO_CLUSTER": "minikube"})
    assert bad.returncode != 0 and "must be local or kind" in bad.stderr


def test_the_demo_tells_a_kind_user_what_differs() -> None:
    script = (ROOT / "hack" / "demo.sh").read_text()
    assert "the patch above is admitted, not refused" in script
    assert "AISTACK_DEMO_CLUSTER=kind make demo" in README


def test_the_demo_operator_serves_the_argocd_examples_namespace() -> None:
    import yaml

    stacks = yaml.safe_load((ROOT / "examples" / "argocd" / "aistack-stacks.yaml").read_text())
    namespace = stacks["spec"]["destination"]["namespace"]
    script = (ROOT / "hack" / "demo.sh").read_text()
    assert re.search(r"^NS=demo$", script, re.M) and '--namespace "$NS"' in script
    assert f"--namespace {namespace} " in script
