"""LoRA adapters: the rendered init containers fetch them, for real, where vLLM reads them.

``examples/lora.yaml`` serves two adapters on ``qwen-7b``: one from the Hugging Face Hub at
a pinned revision, one from a PVC. A variant of it (built here) takes the first from S3
with the model's ``credentialsSecretRef``. Each rendered ``fetch-adapter-<i>`` init
container runs with the vLLM environment (the programs of the image it names), its command,
args, env and ``envFrom`` Secret as rendered, its mounts as host directories:

- Hub: ``hf download <repo> --local-dir <dir> --revision <rev>`` against a loopback
  stand-in of the Hub (``HF_ENDPOINT``) that holds the repo at the pinned commit and a newer
  ``main``: the files of the pinned revision land in the rendered directory, and that is
  the directory the vLLM container's ``--lora-modules`` names for the adapter;
- S3: ``python3 -c <fetch_s3.py> s3://<bucket>/<prefix> <dir>`` against a real S3 server
  (versitygw, see fixtures_mlflow.py) with the credentials and endpoint the Secret provides:
  every object under the prefix lands under the rendered directory, nested keys included,
  and nothing from a sibling prefix does.

Whether vLLM accepts the adapter files at the rendered paths is test_vllm.py's part.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from fixtures_adapters import (
    HubRepo,
    HubStandIn,
    init_containers,
    peft_adapter_files,
    read_tree,
    rendered_lora_modules,
    run_init_container,
)
from fixtures_mlflow import ObjectStore, run_python
from harness import HostMap, Manifest

EXAMPLE = "lora.yaml"
DEPLOYMENT = "lora-vllm-qwen-7b"
BASE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
#: hf download keeps its own bookkeeping (``.cache/huggingface/``) in the local dir.
HF_LOCAL_DIR_METADATA = ".cache"


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _fake_commit(seed: str, prefix: str = "") -> str:
    return (prefix + hashlib.sha1(seed.encode()).hexdigest())[:40]


@pytest.fixture(scope="module")
def lora_manifests() -> list[Manifest]:
    return harness.render_example(harness.example(EXAMPLE))


def _init_for(manifests: list[Manifest], adapter: str) -> dict[str, Any]:
    """The init container that fetches ``adapter`` (its download goes to that adapter's
    rendered ``--lora-modules`` path)."""
    path = rendered_lora_modules(harness.container(manifests, DEPLOYMENT))[adapter]
    found = [c for c in init_containers(manifests, DEPLOYMENT) if path in c["command"]]
    assert len(found) == 1, f"no single init container writes {path}: {found}"
    return found[0]


# --------------------------------------------------------------------------- Hub


def test_hub_adapter_is_fetched_at_the_pinned_revision(
    lora_manifests: list[Manifest],
    hub_standin: HubStandIn,
    vllm_env: Path,
    suite_dir: Path,
    log_dir: Path,
) -> None:
    init = _init_for(lora_manifests, "support-bot")
    argv = init["command"] + init.get("args", [])
    assert argv[:2] == ["hf", "download"], argv
    repo, revision, local_dir = argv[2], _flag(argv, "--revision"), _flag(argv, "--local-dir")
    assert revision, f"the example pins the adapter's revision, the render drops it: {argv}"
    assert {"name": "HF_HUB_DISABLE_UPDATE_CHECK", "value": "1"} in init["env"]
    assert (
        local_dir
        == rendered_lora_modules(harness.container(lora_manifests, DEPLOYMENT))["support-bot"]
    )
    # The pinned commit, and a newer main whose files differ (and has one more).
    pinned = _fake_commit("pinned", revision) if len(revision) < 40 else revision
    newer = _fake_commit("newer")
    pinned_files = {
        **peft_adapter_files(r=8, base_model=BASE_MODEL, marker="pinned", fill=1),
        "README.md": b"# support-bot\nthe pinned revision\n",
    }
    newer_files = {
        **peft_adapter_files(r=16, base_model=BASE_MODEL, marker="newer", fill=2),
        "README.md": b"# support-bot\na newer revision\n",
        "added-later.txt": b"not in the pinned revision\n",
    }
    hub_standin.repos[repo] = HubRepo(
        repo, commits={pinned: pinned_files, newer: newer_files}, refs={"main": newer}
    )
    before = len(hub_standin.seen())

    run = run_init_container(
        lora_manifests,
        DEPLOYMENT,
        init["name"],
        workdir=suite_dir / "lora-pod-hub",
        log_dir=log_dir,
        # Test-side: the Hub is the stand-in. The CLI's PyPI version check is off by the
        # rendered env (asserted above), so nothing beyond loopback is reached.
        extra_env={"HF_ENDPOINT": hub_standin.url},
    )
    assert run.code == 0, f"{init['name']} exited with {run.code}:\n{run.output[-4000:]}"

    target = run.spec.host_path(local_dir)
    got = read_tree(target, skip=[HF_LOCAL_DIR_METADATA])
    assert got == pinned_files, sorted(got)
    assert got != newer_files
    # Asked the Hub for the pinned revision, then fetched every file at its commit only.
    requests = hub_standin.seen()[before:]
    paths = [p for _m, p in requests]
    # A full commit id is listed directly (tree API); a short one is resolved first.
    asked = (f"/api/models/{repo}/revision/{revision}", f"/api/models/{repo}/tree/{revision}")
    assert any(p.startswith(asked) for p in paths), paths
    fetched = [p for p in paths if f"/{repo}/resolve/" in p]
    assert fetched, paths
    assert all(f"/resolve/{pinned}/" in p for p in fetched), fetched
    assert not any(newer in p for p in paths), paths
    # The model's cache (HF_HOME) is not where the adapter went.
    hf_home = run.spec.env["HF_HOME"]
    assert not str(target).startswith(hf_home), (target, hf_home)


def test_hub_fetch_fails_on_a_revision_the_hub_does_not_have(
    lora_manifests: list[Manifest],
    hub_standin: HubStandIn,
    vllm_env: Path,
    suite_dir: Path,
    log_dir: Path,
) -> None:
    """The init container's failure is what holds the pod back (vLLM would start without
    the adapter's files): ``hf download`` must exit non-zero on a revision that is not
    there, and write nothing."""
    init = _init_for(lora_manifests, "support-bot")
    repo = init["command"][2]
    hub_standin.repos[repo] = HubRepo(
        repo, commits={_fake_commit("other"): {"README.md": b"x\n"}}, refs={}
    )
    run = run_init_container(
        lora_manifests,
        DEPLOYMENT,
        init["name"],
        workdir=suite_dir / "lora-pod-hub-missing",
        log_dir=log_dir,
        extra_env={"HF_ENDPOINT": hub_standin.url},
    )
    assert run.code != 0, run.output[-2000:]
    assert "revision" in run.output.lower(), run.output[-2000:]
    target = run.spec.host_path(_flag(init["command"], "--local-dir") or "")
    written = read_tree(target, skip=[HF_LOCAL_DIR_METADATA]) if target.exists() else {}
    assert written == {}


# --------------------------------------------------------------------------- S3


S3_BUCKET = "lora-adapters"
S3_PREFIX = "qwen2.5-7b/support-bot"
S3_SECRET = "adapter-store"

PUT_OBJECTS = r"""
import json, os, boto3
s3 = boto3.client("s3")
bucket = os.environ["BUCKET"]
if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=bucket)
with open(os.environ["OBJECTS"]) as f:
    objects = json.load(f)
for key, hex_data in objects.items():
    s3.put_object(Bucket=bucket, Key=key, Body=bytes.fromhex(hex_data))
print(json.dumps(sorted(objects)))
"""


def store_secret(store: ObjectStore) -> dict[str, str]:
    """What the user's Secret holds: the keys the API reference names for s3:// sources."""
    return {
        "AWS_ACCESS_KEY_ID": store.access_key,
        "AWS_SECRET_ACCESS_KEY": store.secret_key,
        "AWS_ENDPOINT_URL": store.endpoint,
    }


def put_objects(
    store: ObjectStore, hosts: HostMap, workdir: Path, objects: dict[str, bytes]
) -> None:
    """Create the bucket (the user's, made before the stack) and put ``objects`` in it,
    with boto3 of the vLLM environment through the S3 API."""
    listing = workdir / "objects.json"
    listing.write_text(json.dumps({key: data.hex() for key, data in objects.items()}))
    env = harness.base_env(envs.bin_dir("vllm"), workdir)
    env.update(hosts.env())
    env.update(store_secret(store))
    env.update({"BUCKET": S3_BUCKET, "OBJECTS": str(listing)})
    run_python("vllm", PUT_OBJECTS, env=env, timeout=120)


def s3_variant(path: Path) -> Path:
    """examples/lora.yaml with support-bot taken from S3 and the model's
    ``credentialsSecretRef`` naming the Secret with the store's credentials."""
    documents = harness.example_documents(EXAMPLE)
    model = harness.example_stack(documents)["spec"]["models"][0]
    model["credentialsSecretRef"] = {"name": S3_SECRET}
    for adapter in model["adapters"]:
        if adapter["name"] == "support-bot":
            adapter["source"] = f"s3://{S3_BUCKET}/{S3_PREFIX}"
            adapter.pop("revision", None)
    return harness.write_documents(path, documents)


def test_s3_adapter_is_fetched_with_the_models_credentials(
    object_store: ObjectStore,
    hosts: HostMap,
    vllm_env: Path,
    suite_dir: Path,
    log_dir: Path,
) -> None:
    workdir = suite_dir / "lora-pod-s3"
    workdir.mkdir(parents=True, exist_ok=True)
    manifests = harness.render_example(s3_variant(workdir / "lora-s3.yaml"))
    init = _init_for(manifests, "support-bot")
    argv = init["command"] + init.get("args", [])
    assert argv[:2] == ["python3", "-c"], argv[:2]
    assert argv[3:] == [
        f"s3://{S3_BUCKET}/{S3_PREFIX}",
        rendered_lora_modules(harness.container(manifests, DEPLOYMENT))["support-bot"],
    ]
    assert init["envFrom"] == [{"secretRef": {"name": S3_SECRET}}]
    wanted = {
        **peft_adapter_files(r=8, base_model=BASE_MODEL, marker="s3", fill=3),
        "README.md": b"# support-bot from S3\n",
        "checkpoint-100/trainer_state.json": b'{"global_step": 100}\n',
        "checkpoint-100/optimizer/state.bin": bytes(range(256)) * 4,
    }
    objects = {f"{S3_PREFIX}/{name}": data for name, data in wanted.items()}
    # A sibling prefix that starts with the same characters: not part of the adapter.
    objects[f"{S3_PREFIX}-old/adapter_config.json"] = b'{"r": 64}'
    put_objects(object_store, hosts, workdir, objects)

    run = run_init_container(
        manifests,
        DEPLOYMENT,
        init["name"],
        workdir=workdir,
        log_dir=log_dir,
        hosts=hosts,
        secret_env_from={S3_SECRET: store_secret(object_store)},
    )
    assert run.code == 0, f"{init['name']} exited with {run.code}:\n{run.output[-4000:]}"
    target = run.spec.host_path(argv[4])
    assert read_tree(target) == wanted
    assert f"downloaded {len(wanted)} objects" in run.output, run.output[-2000:]


def test_s3_fetch_fails_on_an_empty_prefix(
    object_store: ObjectStore,
    hosts: HostMap,
    vllm_env: Path,
    suite_dir: Path,
    log_dir: Path,
) -> None:
    """Nothing under the prefix (a typo in the source): the init container fails, so the
    pod does not start vLLM without the adapter."""
    workdir = suite_dir / "lora-pod-s3-empty"
    workdir.mkdir(parents=True, exist_ok=True)
    manifests = harness.render_example(s3_variant(workdir / "lora-s3.yaml"))
    init = _init_for(manifests, "support-bot")
    # The bucket exists and holds something, just not under the rendered prefix.
    put_objects(object_store, hosts, workdir, {"elsewhere/adapter_config.json": b"{}"})
    # The same render, the source's prefix pointed at nothing.
    for c in init_containers(manifests, DEPLOYMENT):
        if c["name"] == init["name"]:
            c["command"][3] = f"s3://{S3_BUCKET}/no-such-prefix"
    run = run_init_container(
        manifests,
        DEPLOYMENT,
        init["name"],
        workdir=workdir,
        log_dir=log_dir,
        hosts=hosts,
        secret_env_from={S3_SECRET: store_secret(object_store)},
    )
    assert run.code != 0, run.output[-2000:]
    assert "no objects under" in run.output, run.output[-2000:]
