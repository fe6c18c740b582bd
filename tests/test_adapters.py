"""LoRA adapters: the API's rules, what is rendered for them, and their licenses.

An adapter is served (loaded by vLLM and routed by the gateway) only when its own license
and its base model's are permitted; a denied adapter leaves its base model serving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from aistack.api import AIStack, rules
from aistack.api.v1alpha1 import LORA_RANKS, AIStackStatus
from aistack.components import RenderConfig
from aistack.licenses import (
    admission_messages,
    decide_models,
    decide_stack,
    last_hub_licenses,
    policies_from,
)
from aistack.render import render
from aistack.render.fetch_s3 import targets
from aistack.render.gateway import gateway_config
from aistack.render.models import ADAPTER_DIR, CLAIM_MOUNT, MODEL_MOUNT
from aistack.status import Observed, compute_status, status_dict, transitions
from helpers import ROOT, lws_pod, policy, stack, stack_doc, trusting_policy
from test_status import T0, T1, deployments_for

HUB = {"name": "hub", "source": "org/hub-lora", "revision": "abc123", "license": "Apache-2.0"}
PVC = {"name": "disk", "source": "pvc://loras/team/disk-lora", "license": "MIT"}
S3 = {"name": "bucket", "source": "s3://loras/team/bucket-lora", "license": "MIT"}
NC = {"name": "nc", "source": "org/nc-lora", "license": "CC-BY-NC-4.0"}


def lora_stack(*adapters: dict[str, Any], **model: Any) -> AIStack:
    base = {"name": "base", "source": "microsoft/phi-4", "adapters": list(adapters), **model}
    return stack(models=[base])


def by_kind(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def vllm(manifests: list[dict[str, Any]], deployment: str = "demo-vllm-base") -> dict[str, Any]:
    pod = by_kind(manifests, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] in ("vllm", "ray-worker")]
    return {"pod": pod, "container": container, "args": container.get("args", [])}


def lora_modules(args: list[str]) -> list[str]:
    start = args.index("--lora-modules") + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return args[start:end]


def routes(manifests: list[dict[str, Any]]) -> dict[str, str]:
    config = yaml.safe_load(
        by_kind(manifests, "ConfigMap", "demo-gateway-config")["data"]["config.yaml"]
    )
    return {r["model_name"]: r["litellm_params"]["api_base"] for r in config["model_list"]}


# ---------------------------------------------------------------- API


def test_adapter_names_are_unique_across_models_and_adapters() -> None:
    with pytest.raises(ValidationError, match=rules.UNIQUE_ADAPTER_NAMES):
        lora_stack({"name": "base", "source": "org/a"})
    with pytest.raises(ValidationError, match=rules.UNIQUE_ADAPTER_NAMES):
        lora_stack({"name": "a", "source": "org/a"}, {"name": "a", "source": "org/b"})
    two = [
        {"name": "m", "source": "org/m", "adapters": [{"name": "a", "source": "org/a"}]},
        {"name": "n", "source": "org/n", "adapters": [{"name": "a", "source": "org/b"}]},
    ]
    with pytest.raises(ValidationError, match=r"\(got a\)"):
        stack(models=two)
    two[1]["adapters"] = [{"name": "b", "source": "org/b"}]
    assert [a.name for m in stack(models=two).spec.models for a in m.adapters] == ["a", "b"]


def test_adapters_are_bounded_and_their_fields_checked() -> None:
    many = [{"name": f"a{i}", "source": "org/a"} for i in range(rules.MAX_ADAPTERS)]
    assert len(lora_stack(*many).spec.models[0].adapters) == rules.MAX_ADAPTERS
    with pytest.raises(ValidationError, match="adapters"):
        lora_stack(*many, {"name": "one-more", "source": "org/a"})
    for source in ("https://example.com/a", "gs://bucket/a", "pvc://Bad_Claim/a", ""):
        with pytest.raises(ValidationError, match="source"):
            lora_stack({"name": "a", "source": source})
    for rank in LORA_RANKS:
        assert lora_stack(maxLoraRank=rank).spec.models[0].max_lora_rank == rank
    for bad in (0, 2, 9, 1024, "16"):
        with pytest.raises(ValidationError, match="maxLoraRank"):
            lora_stack(maxLoraRank=bad)
    with pytest.raises(ValidationError, match="maxLoras"):
        lora_stack(maxLoras=0)


def test_the_crd_states_the_same_rules() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "aistack.dev_aistacks.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model = schema["properties"]["models"]["items"]
    adapters = model["properties"]["adapters"]
    assert adapters["maxItems"] == rules.MAX_ADAPTERS
    assert adapters["x-kubernetes-list-map-keys"] == ["name"]
    assert model["properties"]["maxLoraRank"]["enum"] == list(LORA_RANKS)
    messages = [r["message"] for r in schema["x-kubernetes-validations"]]
    assert rules.UNIQUE_ADAPTER_NAMES in messages


# ---------------------------------------------------------------- render


def test_permitted_adapters_are_loaded_by_one_lora_modules_flag() -> None:
    s = lora_stack(HUB, PVC, S3, maxLoras=2, maxLoraRank=32)
    args = vllm(render(s, {"base": True, "hub": True, "disk": True, "bucket": True}))["args"]
    assert args.count("--lora-modules") == 1 and args.count("--enable-lora") == 1
    assert args[args.index("--max-loras") + 1] == "2"
    assert args[args.index("--max-lora-rank") + 1] == "32"
    # Every listed adapter stays in CPU memory: at least max-loras, one per adapter.
    assert args[args.index("--max-cpu-loras") + 1] == "3"
    assert lora_modules(args) == [
        f"hub={ADAPTER_DIR}/hub",
        f"disk={CLAIM_MOUNT}/loras/team/disk-lora",
        f"bucket={ADAPTER_DIR}/bucket",
    ]


def test_without_permitted_adapters_lora_is_off() -> None:
    plain = vllm(render(lora_stack(), {"base": True}))
    assert "--enable-lora" not in plain["args"] and "initContainers" not in plain["pod"]
    denied = vllm(render(lora_stack(HUB, NC), {"base": True, "hub": False, "nc": False}))
    assert "--enable-lora" not in denied["args"] and "initContainers" not in denied["pod"]
    # An adapter missing from the verdicts is not permitted (fail closed).
    assert "--enable-lora" not in vllm(render(lora_stack(HUB), {"base": True}))["args"]


def test_a_denied_adapter_is_neither_loaded_nor_routed_and_its_base_keeps_serving() -> None:
    manifests = render(lora_stack(HUB, NC), {"base": True, "hub": True, "nc": False})
    server = vllm(manifests)
    assert lora_modules(server["args"]) == [f"hub={ADAPTER_DIR}/hub"]
    assert [c["name"] for c in server["pod"]["initContainers"]] == ["fetch-adapter-0"]
    assert by_kind(manifests, "Deployment", "demo-vllm-base")["spec"]["replicas"] == 1
    url = "http://demo-vllm-base.ml.svc.cluster.local:8000/v1"
    assert routes(manifests) == {"base": url, "hub": url}


def test_a_blocked_base_takes_its_adapters_with_it() -> None:
    manifests = render(lora_stack(HUB), {"base": False, "hub": True})
    assert "--enable-lora" not in vllm(manifests)["args"]
    assert by_kind(manifests, "Deployment", "demo-vllm-base")["spec"]["replicas"] == 0
    assert routes(manifests) == {}


def test_adapters_route_to_their_own_models_server() -> None:
    s = stack(models=[
        {"name": "m", "source": "microsoft/phi-4", "adapters": [{"name": "ma", "source": "o/a"}]},
        {"name": "n", "source": "microsoft/phi-2", "adapters": [{"name": "na", "source": "o/b"}]},
    ])  # fmt: skip
    got = routes(render(s, dict.fromkeys(["m", "n", "ma", "na"], True)))
    assert got["ma"] == got["m"] != got["n"] == got["na"]
    config = gateway_config(s, list(s.spec.models), RenderConfig())
    (na,) = [r for r in config["model_list"] if r["model_name"] == "na"]
    assert na["litellm_params"]["model"] == "hosted_vllm/na"  # vLLM serves it by its name


def test_hub_and_s3_adapters_are_downloaded_by_init_containers() -> None:
    s = lora_stack(HUB, PVC, S3, {"name": "latest", "source": "org/latest-lora"},
                   hfTokenSecretRef={"name": "hf", "key": "token"},
                   credentialsSecretRef={"name": "s3-creds"})  # fmt: skip
    server = vllm(render(s, dict.fromkeys(["base", "hub", "disk", "bucket", "latest"], True)))
    fetchers = {c["name"]: c for c in server["pod"]["initContainers"]}
    # The PVC adapter (index 1) needs none; indexes follow the spec's order.
    assert list(fetchers) == ["fetch-adapter-0", "fetch-adapter-2", "fetch-adapter-3"]
    assert fetchers["fetch-adapter-0"]["command"] == [
        "hf", "download", "org/hub-lora", "--local-dir", f"{ADAPTER_DIR}/hub",
        "--revision", "abc123",
    ]  # fmt: skip
    assert fetchers["fetch-adapter-3"]["command"] == [
        "hf", "download", "org/latest-lora", "--local-dir", f"{ADAPTER_DIR}/latest",
    ]  # fmt: skip
    s3 = fetchers["fetch-adapter-2"]["command"]
    assert s3[:2] == ["python3", "-c"] and s3[3:] == [S3["source"], f"{ADAPTER_DIR}/bucket"]
    main = server["container"]
    for c in fetchers.values():
        # The vLLM image, the model's token and credentials, the cache it downloads into.
        assert c["image"] == main["image"]
        assert c["env"] == [*main["env"], {"name": "HF_HUB_DISABLE_UPDATE_CHECK", "value": "1"}]
        assert c["envFrom"] == main["envFrom"]
        assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert any(e["name"] == "HF_TOKEN" for e in main["env"])


def test_pvc_adapters_mount_their_claim_once_read_only() -> None:
    s = lora_stack(PVC, {"name": "disk2", "source": "pvc://loras/other", "license": "MIT"},
                   {"name": "own", "source": "pvc://weights/own-lora", "license": "MIT"},
                   source="pvc://weights/phi", license="MIT")  # fmt: skip
    server = vllm(render(s, dict.fromkeys(["base", "disk", "disk2", "own"], True)))
    claims = [v["persistentVolumeClaim"] for v in server["pod"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == [
        {"claimName": "weights", "readOnly": True},
        {"claimName": "loras", "readOnly": True},
    ]
    assert lora_modules(server["args"]) == [
        f"disk={CLAIM_MOUNT}/loras/team/disk-lora",
        f"disk2={CLAIM_MOUNT}/loras/other",
        f"own={MODEL_MOUNT}/own-lora",  # the model's own claim, already mounted
    ]
    mounts = server["container"]["volumeMounts"]
    mount = next(m for m in mounts if m["mountPath"] == f"{CLAIM_MOUNT}/loras")
    assert mount["readOnly"] is True
    assert "initContainers" not in server["pod"]


@pytest.mark.parametrize("backend", ["vllm", "ray"])
def test_every_pod_of_a_multi_node_model_downloads_its_adapters(backend: str) -> None:
    image = {"image": "registry.example/vllm-ray:1"} if backend == "ray" else {}
    s = lora_stack(HUB, nodes=2, multiNode={"backend": backend}, **image)
    manifests = render(s, {"base": True, "hub": True})
    pods = [lws_pod(manifests, "demo-vllm-base-lws", role) for role in ("leader", "worker")]
    for pod in pods:
        assert [c["name"] for c in pod["initContainers"]] == ["fetch-adapter-0"]
    (leader,) = pods[0]["containers"]
    argv = " ".join(leader["args"])
    assert f"--lora-modules hub={ADAPTER_DIR}/hub" in argv


def test_adding_an_adapter_rolls_the_model_one_replica_at_a_time() -> None:
    # No runtime loading (see docs/api.md): an adapter change is a new pod template, which
    # the Deployment rolls out without surging (GPUs) and one replica down at a time.
    before = render(lora_stack(replicas=2), {"base": True})
    after = render(lora_stack(HUB, replicas=2), {"base": True, "hub": True})
    old, new = (by_kind(m, "Deployment", "demo-vllm-base") for m in (before, after))
    assert old["spec"]["template"] != new["spec"]["template"]
    assert new["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert by_kind(after, "PodDisruptionBudget", "demo-vllm-base")["spec"]["maxUnavailable"] == 1
    env = [e["name"] for e in vllm(after)["container"]["env"]]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env


def test_s3_fetch_keeps_every_object_below_its_directory(tmp_path: Path) -> None:
    dest = str(tmp_path / "a")
    got = targets(["p/", "p/adapter_config.json", "p/sub/w.safetensors", "other/x"], "p/", dest)
    assert got == [
        ("p/adapter_config.json", f"{dest}/adapter_config.json"),
        ("p/sub/w.safetensors", f"{dest}/sub/w.safetensors"),
    ]
    with pytest.raises(ValueError, match="outside"):
        targets(["p/../../etc/passwd"], "p/", dest)


def test_the_s3_fetch_program_refuses_an_empty_prefix_without_boto3_calls(tmp_path: Path) -> None:
    # The rendered program runs as `python3 -c`: it must at least compile and read its
    # argv; with no boto3 here, importing it fails only inside main().
    text = (ROOT / "operator" / "aistack" / "render" / "fetch_s3.py").read_text()
    compile(text, "fetch_s3", "exec")
    result = subprocess.run(
        [sys.executable, "-c", text, "s3://bucket/p", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert result.returncode != 0
    assert "boto3" in result.stderr  # it got as far as its client


# ---------------------------------------------------------------- licenses


def test_an_adapter_is_checked_like_a_model_on_top_of_its_base() -> None:
    models = lora_stack(HUB, NC, PVC | {"license": None}).spec.models
    v = decide_models(models, policies_from([trusting_policy()]))
    assert (v["hub"].permitted, v["hub"].license, v["hub"].license_source) == (
        True, "Apache-2.0", "Declared",
    )  # fmt: skip
    assert (v["nc"].permitted, v["nc"].reason) == (False, "LicenseDenied")
    assert v["nc"].message.startswith("adapter nc of model base: org/nc-lora is under CC-BY-NC-4.0")
    # A PVC has no card: without a declared license, the adapter's license is unknown.
    assert (v["disk"].permitted, v["disk"].reason) == (False, "LicenseUnknown")
    assert v["base"].permitted
    # Under the default policy a Hugging Face adapter's license that only the stack
    # declares is not proof: the catalog or the Hub must confirm it.
    v = decide_models(models, policies_from([]))
    assert (v["hub"].permitted, v["hub"].reason) == (False, "LicenseUnverified")
    assert "org/hub-lora@abc123 declares Apache-2.0, but neither the catalog" in v["hub"].message
    # A PVC's declared license is trusted by default: nothing else could know it.
    assert decide_models(lora_stack(PVC).spec.models, policies_from([]))["disk"].permitted


def test_a_denied_base_denies_its_adapters() -> None:
    s = stack(models=[{"name": "nc-base", "source": "CohereForAI/c4ai-command-r-plus",
                       "adapters": [HUB]}])  # fmt: skip
    v = decide_models(s.spec.models, policies_from([trusting_policy()]))
    assert not v["nc-base"].permitted
    assert (v["hub"].permitted, v["hub"].reason) == (False, "BaseModelBlocked")
    assert "its base model is not permitted" in v["hub"].message
    assert v["hub"].license == "Apache-2.0"  # its own license, reported as such


def test_the_hub_card_of_an_adapter_is_read_at_its_pinned_revision() -> None:
    from test_licenses import FakeHub

    hub = FakeHub({("org/hub-lora", "abc123"): ("cc-by-nc-4.0", "")})
    v = decide_models(lora_stack(HUB | {"license": None}).spec.models, policies_from([]), hub=hub)
    assert (v["hub"].license, v["hub"].license_source, v["hub"].permitted) == (
        "CC-BY-NC-4.0", "Hub", False,
    )  # fmt: skip
    assert ("org/hub-lora", "abc123") in hub.asked


def test_an_exception_can_name_an_adapter() -> None:
    p = policy(allow=["MIT"], exceptions=[{"model": "org/nc-lora", "reason": "LEGAL-7"}])
    v = decide_models(lora_stack(NC).spec.models, policies_from([p]))
    assert (v["nc"].permitted, v["nc"].reason) == (True, "PolicyException")
    assert "LEGAL-7" in v["nc"].message


def test_the_webhook_names_the_model_the_adapter_and_the_license() -> None:
    denied, warned = admission_messages(lora_stack(HUB, NC), [trusting_policy()])
    assert warned == []
    assert denied == [
        "adapter nc of model base: org/nc-lora is under CC-BY-NC-4.0, which policy default denies"
    ]
    _, warned = admission_messages(lora_stack(NC), [policy(allow=["MIT"], enforcement="Warn")])
    assert len(warned) == 1 and warned[0].startswith("adapter nc of model base:")


def test_status_reports_each_adapter_and_a_blocked_one_degrades_the_stack() -> None:
    s = lora_stack(HUB, NC, replicas=2)
    verdicts = decide_stack(s, [trusting_policy()])
    status = compute_status(s, verdicts, Observed(deployments_for(s)), now=T0)
    (model,) = status.models
    assert model.reason == "Ready" and model.ready_replicas == 2  # the base serves
    assert [(a.name, a.permitted, a.reason, a.license) for a in model.adapters or []] == [
        ("hub", True, "LicenseAllowed", "Apache-2.0"),
        ("nc", False, "LicenseDenied", "CC-BY-NC-4.0"),
    ]
    assert status.phase == "Degraded"
    conditions = {c.type: c for c in status.conditions}
    assert conditions["LicenseCompliant"].status == "False"
    assert conditions["Ready"].status == "False"
    assert "adapter nc of model base" in conditions["LicenseCompliant"].message
    assert conditions["ModelsReady"].status == "True"
    # Written and read back by the API server's rules: camelCase, none of it lost.
    doc = status_dict(status)
    assert doc["models"][0]["adapters"][1]["licenseSource"] == "Declared"
    assert AIStackStatus.model_validate(doc) == status
    # Without blocked adapters the same stack is Ready.
    fine = lora_stack(HUB, replicas=2)
    ready = compute_status(
        fine, decide_stack(fine, [trusting_policy()]), Observed(deployments_for(fine)), now=T0
    )
    assert ready.phase == "Ready"


def test_an_adapter_that_becomes_blocked_posts_one_event() -> None:
    s = lora_stack(NC)
    allowing = [policy(allow=["MIT", "CC-BY-NC-4.0"], unverified={"huggingFace": "Trust"})]
    before = compute_status(s, decide_stack(s, allowing), Observed(deployments_for(s)), now=T0)
    after = compute_status(s, decide_stack(s, []), Observed(deployments_for(s)), now=T1)
    events = transitions(before, after)
    assert [e.reason for e in events if e.reason == "AdapterBlocked"] == ["AdapterBlocked"]
    assert not [e for e in transitions(after, after) if e.reason == "AdapterBlocked"]


def test_the_hubs_last_answer_for_an_adapter_is_kept_from_the_status() -> None:
    doc = stack_doc(models=[{"name": "base", "source": "microsoft/phi-4", "adapters": [
        {"name": "hub", "source": "org/hub-lora", "revision": "abc123"}]}])  # fmt: skip
    doc["status"] = {"models": [{"name": "base", "adapters": [
        {"name": "hub", "source": "org/hub-lora", "revision": "abc123",
         "license": "Apache-2.0", "licenseSource": "Hub"}]}]}  # fmt: skip
    assert last_hub_licenses(AIStack.model_validate(doc)) == {"hub": "Apache-2.0"}
    doc["spec"]["models"][0]["adapters"][0]["revision"] = "def456"  # another revision
    assert last_hub_licenses(AIStack.model_validate(doc)) == {}


def test_license_check_lists_adapters_and_fails_on_a_denied_one(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(json.dumps(stack_doc(models=[
        {"name": "base", "source": "microsoft/phi-4", "adapters": [HUB, NC]}])))  # fmt: skip
    trusting = tmp_path / "policy.yaml"
    trusting.write_text(json.dumps(trusting_policy()))
    run = [sys.executable, "-m", "aistack.cli", "license", "check", "-f", str(path),
           "--policy", str(trusting)]  # fmt: skip
    result = subprocess.run([*run, "-o", "json"], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["model"], r["adapter"], r["permitted"]) for r in rows] == [
        ("base", None, True), ("base", "hub", True), ("base", "nc", False),
    ]  # fmt: skip
    text = subprocess.run(run, capture_output=True, text=True).stdout
    assert "demo/base/nc (adapter): DENIED  license=CC-BY-NC-4.0" in text
    path.write_text(json.dumps(stack_doc(models=[
        {"name": "base", "source": "microsoft/phi-4", "adapters": [HUB]}])))  # fmt: skip
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0


def test_render_deny_previews_a_blocked_adapter(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(json.dumps(stack_doc(models=[
        {"name": "base", "source": "microsoft/phi-4", "adapters": [HUB, PVC]}])))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "aistack.cli", "render", "-f", str(path), "--deny", "hub"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    manifests = [d for d in yaml.safe_load_all(out) if d]
    assert lora_modules(vllm(manifests)["args"]) == [f"disk={CLAIM_MOUNT}/loras/team/disk-lora"]
    assert set(routes(manifests)) == {"base", "disk"}
