"""The aistack command, run as a user runs it: a real process, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aistack.crd import all_crds
from helpers import ROOT, stack_doc


def aistack(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def write(tmp_path: Path, doc: object, name: str = "stack.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(doc if isinstance(doc, list) else [doc]))
    return str(path)


def test_render_quickstart_prints_the_manifests() -> None:
    result = aistack("render", "-f", str(ROOT / "examples" / "quickstart.yaml"))
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "quickstart-vllm-phi-3-5-mini") in kinds
    assert ("Service", "quickstart-gateway") in kinds
    assert result.stdout.startswith("---\n")


def test_render_several_files_and_stdin(tmp_path: Path) -> None:
    other = write(tmp_path, stack_doc(name="other"))
    text = (ROOT / "examples" / "quickstart.yaml").read_text()
    result = aistack("render", "-f", "-", "-f", other, "-n", "team", stdin=text)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert {d["metadata"]["labels"]["aistack.dev/stack"] for d in docs} == {"quickstart", "other"}
    assert {d["metadata"]["namespace"] for d in docs} == {"team", "ml"}


def test_invalid_field_exits_2_naming_file_and_path(tmp_path: Path) -> None:
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "gpus": 0}])
    path = write(tmp_path, doc)
    result = aistack("render", "-f", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = "spec.models[0].gpus: Input should be greater than or equal to 1 (got 0)"
    assert f"{path} (document 1): {expected}" in result.stderr
    assert result.stdout == ""


def test_cross_field_rule_names_the_object(tmp_path: Path) -> None:
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "gpus": 4, "tensorParallelSize": 3}])
    result = aistack("render", "-f", write(tmp_path, doc))
    assert result.returncode == 2
    assert "spec.models[0]: tensorParallelSize must divide gpus" in result.stderr


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    doc = stack_doc(models=[{"name": "Bad", "source": "o/m", "replicas": -1}])
    result = aistack("render", "-f", write(tmp_path, doc), "-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "spec.models[0].name" in result.stderr
    assert "spec.models[0].replicas" in result.stderr
    assert "missing.yaml: cannot read" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "no AIStack found"),
        (
            "apiVersion: aistack.dev/v1alpha1\nkind: AIStak\nmetadata: {name: x}\n",
            "'AIStak' is not a kind",
        ),
        ("apiVersion: aistack.dev/v1\nkind: AIStack\nmetadata: {name: x}\n", "not served"),
        ("apiVersion: aistack.dev/v1alpha1\nkind: AIStack\nspec: {}\n", "metadata: Field required"),
    ],
)
def test_files_that_are_not_stacks(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = aistack("render", "-f", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_other_kinds_beside_a_stack_are_skipped_with_a_note(tmp_path: Path) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    result = aistack("render", "-f", write(tmp_path, [secret, stack_doc()]))
    assert result.returncode == 0, result.stderr
    assert "skipped Secret" in result.stderr
    assert "kind: Secret" not in result.stdout


def test_deny_previews_a_blocked_model(tmp_path: Path) -> None:
    doc = stack_doc(models=[{"name": "a", "source": "o/a"}, {"name": "b", "source": "o/b"}])
    path = write(tmp_path, doc)
    result = aistack("render", "-f", path, "--deny", "b")
    assert result.returncode == 0, result.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}
    assert docs[("Deployment", "demo-vllm-a")]["spec"]["replicas"] == 1
    assert docs[("Deployment", "demo-vllm-b")]["spec"]["replicas"] == 0
    assert "model_name: b" not in docs[("ConfigMap", "demo-gateway-config")]["data"]["config.yaml"]
    result = aistack("render", "-f", path, "--deny", "nope")
    assert result.returncode == 2 and "no model, adapter or provider named nope" in result.stderr


def test_crds_command_prints_what_crds_dir_holds(tmp_path: Path) -> None:
    result = aistack("crds")
    assert result.returncode == 0
    assert list(yaml.safe_load_all(result.stdout)) == list(all_crds().values())
    result = aistack("crds", "--output-dir", str(tmp_path))
    assert result.returncode == 0
    for path in (ROOT / "crds").glob("*.yaml"):
        assert (tmp_path / path.name).read_text() == path.read_text()


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "aistack"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("aistack ")


def test_run_passes_the_resync_interval_to_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from aistack import handlers, metrics
    from aistack.cli import main
    from aistack.limits import DEFAULT_RESYNC

    monkeypatch.setattr(kopf, "run", lambda **kw: None)
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    monkeypatch.setattr(handlers, "RUNTIME", handlers.RUNTIME)
    monkeypatch.setattr(handlers, "load_client", lambda *a: object())
    served: list[int] = []
    monkeypatch.setattr(metrics, "serve", lambda port, addr="0.0.0.0": served.append(port))
    assert main(["run"]) == 0
    assert served == [9090], "metrics are served by default"
    assert handlers.RUNTIME.settings.resync == DEFAULT_RESYNC == 300.0
    assert handlers.RUNTIME.settings.hub is None, "the Hub is asked only with --hub"
    assert main(["run", "--resync-interval", "42"]) == 0
    rt = handlers.RUNTIME
    rt.start()
    assert rt.queue is not None and rt.queue._resync == 42.0
    assert main(["run", "--resync-interval", "0", "--metrics-port", "0"]) == 0
    assert served == [9090, 9090], "--metrics-port 0 serves none"
    assert handlers.RUNTIME is not rt, "each run gets its own runtime"
    rt = handlers.RUNTIME
    assert rt.settings.resync == 0.0
    rt.start()
    assert rt.queue is not None and rt.queue._resync is None, "0 turns the resync off"
    with pytest.raises(SystemExit):
        main(["run", "--resync-interval", "-1"])


def test_run_hands_its_settings_to_the_reconciler_and_the_webhook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kopf

    from aistack import handlers
    from aistack.cli import main
    from aistack.hub import HfHub

    monkeypatch.setattr(kopf, "run", lambda **kw: None)
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    monkeypatch.setattr(handlers, "RUNTIME", handlers.RUNTIME)
    monkeypatch.setenv("KUBECONFIG", "")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    clients: list[tuple[Any, ...]] = []

    def load_client(*args: Any) -> object:
        clients.append(args)
        return object()

    monkeypatch.setattr(handlers, "load_client", load_client)
    args = ["run", "--hub", "--workers", "3", "--api-qps", "5", "--api-burst", "7",
            "--kubeconfig", "/etc/kube.conf", "--vllm-image", "registry.local/vllm:1",
            "--metrics-port", "0"]  # fmt: skip
    assert main(args) == 0
    settings = handlers.RUNTIME.settings
    assert (settings.workers, settings.api_qps, settings.api_burst) == (3, 5.0, 7)
    assert settings.kubeconfig == "/etc/kube.conf"
    assert settings.config.images["vllm"] == "registry.local/vllm:1"
    assert isinstance(settings.hub, HfHub) and settings.hub.token == "hf_secret"
    handlers.RUNTIME.start()
    assert clients == [("/etc/kube.conf", 3)]
    reconciler = handlers.RUNTIME.reconciler
    assert reconciler is not None and reconciler.config == settings.config
