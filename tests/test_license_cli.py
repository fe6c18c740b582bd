"""`aistack license check` as a pipeline runs it: exit 0 permitted, 1 denied, 2 bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from helpers import ROOT, trusting_policy

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


def test_every_model_of_a_stack_file(tmp_path: Path) -> None:
    example = ROOT / "examples" / "multi-model.yaml"
    result = check("-f", str(example), "-o", "json")
    rows = json.loads(result.stdout)
    assert [(r["stack"], r["model"], r["permitted"], r["reason"]) for r in rows] == [
        ("multi", "chat", True, "LicenseAllowed"),
        ("multi", "mixtral", True, "LicenseAllowed"),
        ("multi", "gpt-oss", True, "LicenseAllowed"),
    ]
    assert result.returncode == 0
    assert all(r["verified"] == "verified" for r in rows)
    # The multi-node model in an image of its own (e.g. with Ray): its license is fine,
    # but the image is no default one.
    doc = yaml.safe_load(example.read_text())
    big = next(m for m in doc["spec"]["models"] if m["name"] == "gpt-oss")
    big |= {"image": "registry.example.com/vllm-openai-ray:1", "multiNode": {"backend": "ray"}}
    custom = tmp_path / "stack.yaml"
    custom.write_text(yaml.safe_dump(doc))
    rows = json.loads(check("-f", str(custom), "-o", "json").stdout)
    assert [(r["model"], r["permitted"], r["reason"]) for r in rows][2] == (
        "gpt-oss", False, "ImageNotAllowed",
    )  # fmt: skip
    # A policy that allows the image.
    policy = trusting_policy(images={"allow": ["registry.example.com/vllm-openai-ray"]})
    (tmp_path / "policy.yaml").write_text(json.dumps(policy))
    allowed = check("-f", str(custom), "--policy", str(tmp_path / "policy.yaml"))
    assert allowed.returncode == 0, allowed.stdout


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


# ------------------------------------------------------------------ against a local "Hub"
#
# huggingface_hub talks to HF_ENDPOINT: a small HTTP server on localhost answers like the
# Hub's API, so the real client, its errors and HF_TOKEN are exercised without a network.

CARDS = {
    "acme/open-7b": {"license": "apache-2.0"},
    "acme/gated-8b": {"license": "llama3.1"},
}
GATED = {"acme/gated-8b"}


@pytest.fixture
def hub() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            seen.append({"path": url.path, "query": parse_qs(url.query),
                         "auth": self.headers.get("Authorization")})  # fmt: skip
            if url.path == "/api/agent-harnesses":  # huggingface_hub asks once per process
                self.answer(200, {"standardEnvVars": [], "harnesses": {}})
                return
            parts = url.path.removeprefix("/api/models/").split("/")
            repo = "/".join(parts[:2])
            if repo not in CARDS:
                self.answer(404, {"error": "Repository not found"}, "RepoNotFound")
            elif repo in GATED and self.headers.get("Authorization") != "Bearer hf_test":
                self.answer(401, {"error": "Access to model is restricted"}, "GatedRepo")
            else:
                self.answer(200, {"id": repo, "sha": "a" * 40, "cardData": CARDS[repo],
                                  "tags": [f"license:{CARDS[repo]['license']}"]})  # fmt: skip

        def answer(self, status: int, body: dict[str, Any], code: str = "") -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code:
                self.send_header("X-Error-Code", code)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def models_asked(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in seen if r["path"].startswith("/api/models/")]


def hub_env(endpoint: str, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_ENDPOINT"] = endpoint
    env["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")  # no token saved on this machine
    if token:
        env["HF_TOKEN"] = token
    return env


def check_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack.cli", "license", "check", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_offline_unless_hub_is_given(hub: tuple[str, list[dict[str, Any]]]) -> None:
    endpoint, seen = hub
    offline = check_env(hub_env(endpoint), "acme/open-7b")
    assert offline.returncode == 1 and "reason=LicenseUnknown" in offline.stdout
    assert seen == [], "without --hub the command must not call out"
    online = check_env(hub_env(endpoint), "acme/open-7b", "--hub", "--revision", "abc123")
    assert online.returncode == 0, online.stdout + online.stderr
    assert "license=Apache-2.0  source=Hub" in online.stdout
    (request,) = models_asked(seen)
    assert request["path"] == "/api/models/acme/open-7b/revision/abc123"
    assert {"cardData", "tags"} <= set(request["query"]["expand"])


def test_the_catalog_answers_before_the_hub(hub: tuple[str, list[dict[str, Any]]]) -> None:
    endpoint, seen = hub
    result = check_env(hub_env(endpoint), "microsoft/phi-4", "--hub")
    assert result.returncode == 0 and "source=Catalog" in result.stdout
    assert models_asked(seen) == []


def test_hf_token_opens_gated_cards(hub: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    endpoint, seen = hub
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: aistack.dev/v1alpha1\nkind: LicensePolicy\nmetadata: {name: llama}\n"
        "spec: {allow: [LicenseRef-llama3.1]}\n"
    )
    args = ("acme/gated-8b", "--hub", "--policy", str(policy), "-o", "json")
    anonymous = check_env(hub_env(endpoint), *args)
    assert anonymous.returncode == 1, "a card the hub does not show is unknown, not permitted"
    assert json.loads(anonymous.stdout)[0]["reason"] == "LicenseUnknown"
    with_token = check_env(hub_env(endpoint, token="hf_test"), *args)
    assert with_token.returncode == 0, with_token.stdout + with_token.stderr
    (row,) = json.loads(with_token.stdout)
    assert (row["license"], row["licenseSource"]) == ("LicenseRef-llama3.1", "Hub")
    assert [r["auth"] for r in models_asked(seen)] == [None, "Bearer hf_test"]


def test_an_unreachable_hub_is_never_a_permission() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    result = check_env(hub_env(endpoint), "acme/open-7b", "--hub")
    assert result.returncode == 1 and "reason=LicenseUnknown" in result.stdout
    assert time.monotonic() - started < 30
    # A declared license does not stand in for the Hub's answer: nothing verified it.
    declared = check_env(hub_env(endpoint), "acme/open-7b", "--hub", "--license", "MIT")
    assert declared.returncode == 1 and "source=Declared (not verified)" in declared.stdout
    assert "reason=LicenseUnverified" in declared.stdout


# ------------------------------------------------------------------ stack files


def test_a_stack_with_a_denied_model_exits_1(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        "apiVersion: aistack.dev/v1alpha1\nkind: AIStack\nmetadata: {name: s}\n"
        "spec:\n  models:\n"
        "    - {name: ok, source: microsoft/phi-4}\n"
        "    - {name: nc, source: CohereForAI/c4ai-command-r-plus}\n"
    )
    result = check("-f", str(stack))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("s/ok: PERMITTED  license=MIT  source=Catalog")
    assert lines[2].startswith("s/nc: DENIED  license=CC-BY-NC-4.0  source=Catalog")
    assert "reason=LicenseDenied" in lines[2]


def test_a_bad_stack_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        "apiVersion: aistack.dev/v1alpha1\nkind: AIStack\nmetadata: {name: s}\n"
        "spec: {models: [{name: m, source: microsoft/phi-4, gpus: 0}]}\n"
    )
    result = check("-f", str(stack))
    assert result.returncode == 2
    assert f"{stack} (document 1): spec.models[0].gpus" in result.stderr
    assert "Traceback" not in result.stderr
    both = check("microsoft/phi-4", "-f", str(stack))
    assert both.returncode == 2 and "not both" in both.stderr


def test_json_rows_have_one_shape() -> None:
    result = check("meta-llama/Llama-3.1-8B-Instruct", "--revision", "0e9e39f", "-o", "json")
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)
    assert row == {
        "stack": None, "model": None, "adapter": None, "draft": None, "provider": None,
        "image": None, "source": "meta-llama/Llama-3.1-8B-Instruct",
        "revision": "0e9e39f", "license": "LicenseRef-llama3.1", "licenseSource": "Catalog",
        "verified": "verified", "permitted": False, "violation": True,
        "reason": "LicenseNotAllowed",
        "message": "meta-llama/Llama-3.1-8B-Instruct@0e9e39f is under LicenseRef-llama3.1, "
                   "which policy default does not allow",
    }  # fmt: skip
