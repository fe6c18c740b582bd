"""Lint the manifests the project ships: every example stack's render and the chart's variants.

Run by hack/lint-manifests.sh (`make lint-manifests`), which builds the linters first.
Renders each target of hack/manifest-lint.yaml into a scratch directory, runs kube-score
and checkov on each render alone (one render = one install, so their cross-object checks
see the PDBs, NetworkPolicies and Services beside each workload, and nothing of another
install), and compares every finding with the config's `accepted` list. Exit status: 0 when every
finding is accepted, 1 when any is not (each printed), 2 on a usage or tool error.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "hack" / "manifest-lint.yaml"
LINTERS = ("kube-score", "checkov")
#: kube-score grades: 10 is "all OK"; anything lower is a finding.
KUBE_SCORE_OK = 10


@dataclass(frozen=True)
class Finding:
    linter: str
    check: str
    source: str  # example:STEM or chart:VARIANT
    obj: str  # KIND/NAME
    container: str  # "" when the finding is about the whole object
    message: str

    def __str__(self) -> str:
        where = f"{self.obj} [{self.container}]" if self.container else self.obj
        return f"{self.linter}:{self.check}  {self.source}  {where}: {self.message}"


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    with path.open() as f:
        cfg: dict[str, Any] = yaml.safe_load(f)
    return cfg


def _any(patterns: Iterable[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def matches(entry: dict[str, Any], f: Finding) -> bool:
    """Whether an `accepted` entry covers a finding (every field it gives must match)."""
    if f"{f.linter}:{f.check}" not in entry["checks"]:
        return False
    containers = entry.get("containers")
    if containers is not None and not (f.container and _any(containers, f.container)):
        return False
    return (
        _any(entry.get("objects"), f.obj)
        and _any(entry.get("sources"), f.source)
        and _any(entry.get("messages"), f.message)
    )


# ------------------------------------------------------------------ rendering


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, cwd=ROOT, **kw)


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    sys.stderr.write(f"lint-manifests: {what} failed (exit {proc.returncode})\n{proc.stderr}")
    raise SystemExit(2)


def render_targets(cfg: dict[str, Any], helm: str, aistack: str, out: Path) -> dict[str, Path]:
    """Render every target into OUT; returns source name -> file."""
    files: dict[str, Path] = {}
    for example in cfg["examples"]:
        source = f"example:{Path(example).stem}"
        proc = _run([aistack, "render", "-f", example, "-n", cfg["namespace"]])
        if proc.returncode:
            _fail(f"aistack render -f {example}", proc)
        files[source] = out / f"example-{Path(example).stem}.yaml"
        docs = [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]
        files[source].write_text(yaml.safe_dump_all(as_linted(docs), sort_keys=False))
    chart = cfg["chart"]
    for variant in chart["variants"]:
        source = f"chart:{variant}"
        values_file = Path(chart["path"]) / "ci" / f"{variant}-values.yaml"
        cmd = [helm, "template", chart["release"], chart["path"], "--namespace", chart["namespace"]]
        proc = _run([*cmd, "-f", str(values_file)])
        if proc.returncode:
            _fail(f"helm template ({variant})", proc)
        files[source] = out / f"chart-{variant}.yaml"
        files[source].write_text(proc.stdout)
    return files


LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"


def as_linted(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The render with each LeaderWorkerSet as what LWS makes of it (the linters know no
    LeaderWorkerSet, and would not look at its pods): the StatefulSet ``<lws>``, the
    leaders of every group (``worker-index: 0``), ``<lws>-<group>``, one group's workers
    (its ``group-index``), each with the labels LWS gives their pod templates, and the
    headless Service ``<lws>`` that names the pods."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        if doc.get("kind") != "LeaderWorkerSet":
            out.append(doc)
            continue
        spec, template = doc["spec"], doc["spec"]["leaderWorkerTemplate"]
        out.append(_lws_statefulset(doc, doc["metadata"]["name"], spec["replicas"],
                                    template["leaderTemplate"], LWS_WORKER_INDEX, "0"))  # fmt: skip
        for group in range(spec["replicas"]):
            out.append(_lws_statefulset(doc, f"{doc['metadata']['name']}-{group}",
                                        template["size"] - 1, template["workerTemplate"],
                                        LWS_GROUP_INDEX, str(group)))  # fmt: skip
        out.append(_lws_service(doc))
    return out


def _lws_statefulset(
    lws: dict[str, Any], name: str, replicas: int, pod: dict[str, Any], key: str, value: str
) -> dict[str, Any]:
    meta = lws["metadata"]
    selector = {LWS_NAME: meta["name"], key: value}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": meta["labels"]},
        "spec": {
            "replicas": replicas, "serviceName": meta["name"],
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": {**pod["metadata"]["labels"], **selector}},
                         "spec": pod["spec"]},
        },
    }  # fmt: skip


def _lws_service(lws: dict[str, Any]) -> dict[str, Any]:
    meta = lws["metadata"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": meta["labels"]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {LWS_NAME: meta["name"]}},
    }  # fmt: skip


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


# ------------------------------------------------------------------ linters


def kube_score(binary: str, source: str, path: Path, kube_version: str) -> list[Finding]:
    cmd = [binary, "score", "--output-format", "json", "--kubernetes-version", kube_version]
    proc = _run([*cmd, str(path)])
    try:
        objects = json.loads(proc.stdout)
    except json.JSONDecodeError:
        _fail(f"kube-score on {source}", proc)
    findings = []
    for o in objects:
        obj = f"{o['type_meta']['kind']}/{o['object_meta']['name']}"
        for c in o["checks"]:
            if c["skipped"] or c["grade"] >= KUBE_SCORE_OK:
                continue
            for comment in c["comments"] or [{"path": "", "summary": c["check"]["name"]}]:
                findings.append(
                    Finding("kube-score", c["check"]["id"], source, obj,
                            comment.get("path") or "", comment.get("summary") or "")
                )  # fmt: skip
    return findings


_CONTAINER_KEY = re.compile(r"(?:^|/)(initContainers|containers)/\[(\d+)\]")


def _checkov_object(resource: str, docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The object a checkov resource names: KIND.NAMESPACE.NAME, or for its graph checks
    Pod.NAMESPACE.NAME.LABELS... for the pod template of the workload NAME."""
    kind, _, rest = resource.partition(".")
    _, _, rest = rest.partition(".")
    for pod_of_template in (False, True):
        for d in docs:
            name = d.get("metadata", {}).get("name", "")
            same_kind = kind == "Pod" and "template" in d.get("spec", {}) if pod_of_template \
                else d.get("kind") == kind  # fmt: skip
            if same_kind and (rest == name or rest.startswith(name + ".")):
                return f"{d['kind']}/{name}", d
    return f"{kind}/{rest}", {}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "Pod":
        return spec  # type: ignore[no-any-return]
    return spec.get("template", {}).get("spec", {})  # type: ignore[no-any-return]


#: Runs in checkov's own virtualenv: its Kubernetes runner over each directory given,
#: printing the failed checks as JSON. In one process, because checkov's start (its
#: imports) takes seconds and a scan of one render a fraction of one.
_CHECKOV_DRIVER = """
import json, sys
from checkov.kubernetes.runner import Runner
from checkov.runner_filter import RunnerFilter
out = {}
for folder in sys.argv[1:]:
    reports = Runner().run(root_folder=folder, runner_filter=RunnerFilter(framework=["kubernetes"]))
    out[folder] = [
        {"check_id": r.check_id, "check_name": r.check_name, "resource": r.resource,
         "evaluated_keys": (r.check_result or {}).get("evaluated_keys") or []}
        for report in (reports if isinstance(reports, list) else [reports])
        for r in report.failed_checks
    ]
json.dump(out, sys.stdout)
"""


def checkov(binary: str, files: dict[str, Path]) -> list[Finding]:
    """checkov over each render, each in a directory of its own: its graph checks (CKV2_*)
    join objects across files, and one install's NetworkPolicy must not cover another's."""
    folders = {}
    for source, path in files.items():
        folder = path.parent / f"checkov-{path.stem}"
        folder.mkdir(exist_ok=True)
        (folder / path.name).write_text(path.read_text())
        folders[str(folder)] = source
    python = str(Path(binary).resolve().parent / "python")
    proc = _run([python, "-c", _CHECKOV_DRIVER, *folders])
    try:
        results = json.loads(proc.stdout)
    except json.JSONDecodeError:
        _fail("checkov", proc)
    findings = []
    for folder, failed in results.items():
        source = folders[folder]
        docs = _documents(files[source])
        for fc in failed:
            obj, doc = _checkov_object(fc["resource"], docs)
            containers = set()
            for key in fc["evaluated_keys"]:
                if m := _CONTAINER_KEY.search(key):
                    pod = _pod_spec(doc).get(m[1]) or []
                    i = int(m[2])
                    containers.add(pod[i].get("name", "") if i < len(pod) else "")
            for container in sorted(containers) or [""]:
                findings.append(
                    Finding("checkov", fc["check_id"], source, obj, container, fc["check_name"])
                )
    return findings


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helm", required=True)
    ap.add_argument("--kube-score", required=True)
    ap.add_argument("--checkov", required=True)
    ap.add_argument("--aistack", default=str(Path(sys.executable).parent / "aistack"))
    ap.add_argument("--kube-version", required=True, help="vMAJOR.MINOR for kube-score")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--keep", type=Path, help="write the renders here (kept) instead of a temp dir")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list accepted findings")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="lint-manifests.") as tmp:
        scratch = args.keep or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        renders = scratch / "renders"
        renders.mkdir(exist_ok=True)
        files = render_targets(cfg, args.helm, args.aistack, renders)
        # Each render alone (one render = one install), kube-score's runs in parallel with
        # checkov's one.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            scored = [
                pool.submit(kube_score, args.kube_score, source, path, args.kube_version)
                for source, path in files.items()
            ]
            findings = checkov(args.checkov, files)
            for run in scored:
                findings += run.result()

    findings = sorted(set(findings), key=str)
    entries = cfg.get("accepted") or []
    used: dict[str, int] = {e["id"]: 0 for e in entries}
    unaccepted = []
    for f in findings:
        entry = next((e for e in entries if matches(e, f)), None)
        if entry is None:
            unaccepted.append(f)
        else:
            used[entry["id"]] += 1
            if args.verbose:
                print(f"accepted ({entry['id']}): {f}")

    print(
        f"lint-manifests: {len(files)} renders ({', '.join(files)}); "
        f"{len(findings)} findings, {len(findings) - len(unaccepted)} accepted "
        f"({', '.join(f'{k} {v}' for k, v in used.items() if v)})"
    )
    for entry_id, n in used.items():
        if not n:
            print(f"lint-manifests: note: accepted entry '{entry_id}' matched nothing (stale?)")
    if unaccepted:
        print(f"\nlint-manifests: {len(unaccepted)} findings not accepted in {args.config.name}:")
        for f in unaccepted:
            print(f"  {f}")
        print("\nFix them, or accept each with its reason in hack/manifest-lint.yaml and in the"
              " table of docs/manifest-lint.md.")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
