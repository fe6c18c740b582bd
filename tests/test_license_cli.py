"""`aistack license check` as a pipeline runs it: exit 0 permitted, 1 denied, 2 bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

POLICY = str(ROOT / "examples" / "license-policy.yaml")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack.cli", "license", "check", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_permitted_model_exits_0() -> None:
    result = check("mistralai/Mistral-7B-Instruct-v0.3")
    assert result.returncode == 0, result.stderr
    assert "PERMITTED" in result.stdout and "license=Apache-2.0" in result.stdout


def test_denied_model_exits_1_with_the_reason() -> None:
    result = check("CohereForAI/c4ai-command-r-plus")
    assert result.returncode == 1
    assert "is under CC-BY-NC-4.0, which policy default denies" in result.stdout


def test_a_team_policy_changes_the_answer() -> None:
    assert check("meta-llama/Llama-3.1-8B-Instruct").returncode == 1
    assert check("meta-llama/Llama-3.1-8B-Instruct", "--policy", POLICY).returncode == 0
    exception = check("facebook/opt-125m", "--policy", POLICY)
    assert exception.returncode == 0 and "LEGAL-142" in exception.stdout


def test_declared_licenses_and_json_output() -> None:
    result = check("s3://models-bucket/x", "--license", "MIT OR GPL-3.0-only", "-o", "json")
    assert result.returncode == 0
    (row,) = json.loads(result.stdout)
    assert row["licenseSource"] == "Declared" and row["license"] == "MIT OR GPL-3.0-only"
    assert check("s3://models-bucket/x").returncode == 1  # unknown: denied by default


def test_every_model_of_a_stack_file() -> None:
    result = check("-f", str(ROOT / "examples" / "multi-model.yaml"), "-o", "json")
    assert result.returncode == 0, result.stdout
    rows = json.loads(result.stdout)
    assert [(r["stack"], r["model"]) for r in rows] == [
        ("multi", "chat"),
        ("multi", "mixtral"),
        ("multi", "gpt-oss"),
    ]


def test_bad_input_exits_2(tmp_path: Path) -> None:
    assert check().returncode == 2
    assert check("not a model!").returncode == 2
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "apiVersion: aistack.dev/v1alpha1\nkind: LicensePolicy\n"
        "metadata: {name: p}\nspec: {allow: ['not((']}\n"
    )
    result = check("microsoft/phi-4", "--policy", str(bad))
    assert (
        result.returncode == 2
        and "spec.allow" in result.stderr
        and "Traceback" not in result.stderr
    )
    missing = check("microsoft/phi-4", "--policy", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
