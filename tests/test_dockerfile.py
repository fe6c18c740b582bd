"""The operator image, checked without building it: stages, user, contents, and that it
is what the chart runs."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

import aistack

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "aistack-operator"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "python3-dev", "libc6-dev")


@pytest.fixture(scope="module")
def instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser.structure  # type: ignore[no-any-return]


def stages(instructions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for ins in instructions:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_two_stages_on_the_same_slim_python(instructions: list[dict[str, Any]]) -> None:
    builder, final = stages(instructions)
    assert values(builder, "FROM") == ["${PYTHON_IMAGE} AS builder"]
    assert values(final, "FROM") == ["${PYTHON_IMAGE}"]
    arg = next(i["value"] for i in instructions if i["instruction"] == "ARG")
    assert arg.startswith("PYTHON_IMAGE=python:3.11-slim")
    assert any("pip wheel" in v for v in values(builder, "RUN"))


def test_the_final_stage_runs_as_a_numeric_non_root_user(
    instructions: list[dict[str, Any]],
) -> None:
    final = stages(instructions)[-1]
    user = values(final, "USER")
    assert len(user) == 1
    uid, _, gid = user[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert final[-1]["instruction"] in ("ENTRYPOINT", "CMD", "EXPOSE")
    # The chart runs the pod as the same user.
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["podSecurityContext"]["runAsUser"] == int(uid)
    assert chart_values["podSecurityContext"]["runAsGroup"] == int(gid)


def test_no_build_tools_or_caches_in_the_final_image(instructions: list[dict[str, Any]]) -> None:
    builder, final = stages(instructions)
    for stage in (builder, final):
        for run in values(stage, "RUN"):
            words = run.replace("\\", " ").split()
            assert not set(words) & set(BUILD_TOOLS), run
    final_runs = " ".join(values(final, "RUN"))
    assert "apt-get install" not in final_runs
    assert "pip install" not in final_runs and "pip uninstall" in final_runs
    copies = values(final, "COPY")
    assert copies == ["--from=builder /opt/aistack /opt/aistack"], "only the virtualenv"
    assert any("PIP_NO_CACHE_DIR=1" in env for env in values(builder, "ENV"))


def test_entrypoint_ports_and_environment(instructions: list[dict[str, Any]]) -> None:
    final = stages(instructions)[-1]
    (entrypoint,) = values(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["aistack", "run"]
    (expose,) = values(final, "EXPOSE")
    assert set(expose.split()) == {"9443", "8080"}
    env = " ".join(values(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HF_HOME=/tmp/" in env
    # The chart's probes and webhook use the exposed ports.
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert {str(chart_values["healthPort"]), str(chart_values["webhook"]["port"])} == {
        "8080",
        "9443",
    }


def test_the_chart_runs_this_image_at_the_package_version(
    instructions: list[dict[str, Any]],
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == aistack.__version__
    assert chart_values["image"]["repository"] == "ghcr.io/aistack-dev/aistack-operator"
    assert chart_values["image"]["tag"] == ""  # i.e. appVersion
    version_arg = [i["value"] for i in instructions if i["value"].startswith("VERSION=")]
    assert version_arg == [f"VERSION={aistack.__version__}"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, as far as this file uses them: last match wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(q, pattern[3:]) for q in parts)
        ):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_builder_copies_and_nothing_else(
    instructions: list[dict[str, Any]],
) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    builder = stages(instructions)[0]
    for copy in values(builder, "COPY"):
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not _ignored(source, patterns), f"{source} is excluded from the context"
    assert not _ignored("operator/aistack/render/templates/model.yaml.j2", patterns)
    assert not _ignored("operator/aistack/data/model-licenses.tsv", patterns)
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/test_api.py", "charts/x", ".demo/k"):
        assert _ignored(kept_out, patterns), kept_out
    assert _ignored("operator/aistack/__pycache__/cli.cpython-311.pyc", patterns)
