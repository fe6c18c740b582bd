"""LoRA adapters: their files, where the render puts them, and a stand-in of the Hub.

A model with adapters renders (see ``examples/lora.yaml``):

- ``--enable-lora ... --lora-modules name=path ...`` on its ``vllm serve`` command line;
- per Hugging Face or S3 adapter an init container ``fetch-adapter-<i>`` in the vLLM image
  that downloads it to the rendered path (``hf download ... --local-dir``, or
  ``python3 -c <fetch_s3.py> s3://... DIR``); a PVC adapter is a read-only mount.

Here:

- :func:`write_peft_adapter` makes a small PEFT LoRA adapter directory (what ``peft``'s
  ``save_pretrained`` writes: ``adapter_config.json`` and ``adapter_model.safetensors``, the
  tensors shaped for Qwen2.5-7B's ``q_proj`` and ``v_proj`` of layer 0), at a rank of the
  caller's choosing;
- :class:`HubStandIn` answers, on loopback, what ``hf download`` of the vLLM image asks the
  Hugging Face Hub (``HF_ENDPOINT``): the revision API (``/api/models/<repo>/revision/<rev>``,
  branch, tag, full commit or a unique commit prefix, as the Hub resolves them), the tree
  API (``/api/models/<repo>/tree/<commit>``) and file downloads
  (``/<repo>/resolve/<commit>/<file>``, ``HEAD`` and ``GET``, with the ``X-Repo-Commit`` and
  ``ETag`` headers the client reads); unknown repos, revisions and files get the Hub's 404s
  with its ``X-Error-Code``; every request is recorded;
- :func:`run_init_container` runs a rendered init container to completion with the harness
  (command, env, ``envFrom`` Secrets, mounts mapped to host directories).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import envs
import harness
import pytest
from harness import HostMap, Manifest, ProcessSpec

VLLM_ENV = "vllm"

#: Qwen2.5-7B: hidden size 3584; 4 KV heads of 128 (v_proj's output).
_Q_PROJ = (3584, 3584)
_V_PROJ = (3584, 512)


# --------------------------------------------------------------------------- adapter files


def _safetensors(tensors: Mapping[str, tuple[int, ...]], fill: int) -> bytes:
    """A safetensors file (8-byte header length, JSON header, data) of F16 tensors with the
    given shapes, every byte ``fill``."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes([fill]) * offset


def peft_adapter_files(
    *, r: int, base_model: str, marker: str = "", fill: int = 1
) -> dict[str, bytes]:
    """The files of a PEFT LoRA adapter of rank ``r`` on ``q_proj``/``v_proj`` (``marker``
    goes into the config, to tell one revision's files from another's)."""
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "revision": None,
        "aistack_test_marker": marker,
    }
    prefix = "base_model.model.model.layers.0.self_attn"
    tensors: dict[str, tuple[int, ...]] = {}
    for proj, (inp, out) in (("q_proj", _Q_PROJ), ("v_proj", _V_PROJ)):
        tensors[f"{prefix}.{proj}.lora_A.weight"] = (r, inp)
        tensors[f"{prefix}.{proj}.lora_B.weight"] = (out, r)
    return {
        "adapter_config.json": json.dumps(config, indent=2).encode(),
        "adapter_model.safetensors": _safetensors(tensors, fill),
    }


def write_files(directory: Path, files: Mapping[str, bytes]) -> Path:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def write_peft_adapter(directory: Path, *, r: int, base_model: str, marker: str = "") -> Path:
    """A PEFT LoRA adapter of rank ``r`` in ``directory`` (see :func:`peft_adapter_files`)."""
    return write_files(directory, peft_adapter_files(r=r, base_model=base_model, marker=marker))


def read_tree(directory: Path, *, skip: Sequence[str] = ()) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes), but those under ``skip``."""
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and not any(rel == s or rel.startswith(s + "/") for s in skip):
            out[rel] = path.read_bytes()
    return out


# --------------------------------------------------------------------------- the render


def rendered_lora_modules(container: Mapping[str, Any]) -> dict[str, str]:
    """``{adapter name: path}`` of a rendered ``vllm serve`` container's ``--lora-modules``
    (its ``name=path`` entries, as written in the render)."""
    args = [*container.get("command", []), *container.get("args", [])]
    if "--lora-modules" not in args:
        return {}
    out = {}
    for item in args[args.index("--lora-modules") + 1 :]:
        if item.startswith("--"):
            break
        name, sep, path = item.partition("=")
        if not sep:
            raise AssertionError(f"--lora-modules entry {item!r} is not name=path")
        out[name] = path
    return out


def init_containers(manifests: Sequence[Manifest], deployment: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = harness.pod_spec(manifests, deployment).get(
        "initContainers", []
    )
    return containers


@dataclass
class InitRun:
    """A rendered init container run to completion."""

    name: str
    spec: ProcessSpec
    code: int
    output: str


def run_init_container(
    manifests: Sequence[Manifest],
    deployment: str,
    name: str,
    *,
    workdir: Path,
    log_dir: Path,
    hosts: HostMap | None = None,
    secret_env_from: Mapping[str, Mapping[str, str]] | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> InitRun:
    """Run the rendered init container ``name`` of ``deployment`` with the vLLM environment
    (its image's programs: ``hf``, ``python3`` with boto3) until it exits. ``workdir`` holds
    the pod's volumes: the pod's main container, prepared with the same ``workdir``, sees
    what the init container wrote."""
    spec = harness.container_process(
        manifests,
        deployment,
        name,
        workdir=workdir,
        secret_env_from=secret_env_from,
        field_refs={"status.podIP": "127.0.0.1"},
    )
    code, output = harness.run_to_completion(
        spec,
        name=f"{deployment}-{name}-{workdir.name}",
        bin_dir=envs.bin_dir(VLLM_ENV),
        log_dir=log_dir,
        hosts=hosts,
        extra_env=extra_env,
        timeout=timeout,
    )
    return InitRun(name=name, spec=spec, code=code, output=output)


# --------------------------------------------------------------------------- the Hub


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a file's ``oid`` and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    #: full commit id -> files (path -> bytes)
    commits: dict[str, dict[str, bytes]]
    #: branch or tag -> full commit id
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """A branch, a tag, a full commit id, or a commit prefix of at least 7 hex digits
        that names one commit (the Hub resolves short commit ids since 2023)."""
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            found = [c for c in self.commits if c.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None


class HubStandIn:
    """The parts of the Hugging Face Hub's HTTP API that ``hf download`` uses, on loopback."""

    def __init__(self, repos: Sequence[HubRepo], host: str = "127.0.0.1") -> None:
        self.repos = {r.repo_id: r for r in repos}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._serve(self, head=False)

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.requests)

    # ------------------------------------------------------------------ routing

    def _serve(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        with self._lock:
            self.requests.append((h.command, h.path))
        parts = [unquote(p) for p in urlsplit(h.path).path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, kind, rev, rest = "/".join(parts[2:4]), parts[4], parts[5], parts[6:]
            if kind == "revision" and not rest:
                self._revision(h, repo, rev, head)
                return
            if kind == "tree":
                self._tree(h, repo, rev, "/".join(rest), head)
                return
        if len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            return
        self._error(h, 404, "", f"no route {h.path}", head)

    def _commit(
        self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, head: bool
    ) -> tuple[HubRepo, str] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", f"Repository Not Found for {repo_id}", head)
            return None
        commit = repo.resolve(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return None
        return repo, commit

    def _revision(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, head: bool) -> None:
        found = self._commit(h, repo_id, rev, head)
        if found is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": ["peft", "safetensors", "lora", "license:apache-2.0"],
            "cardData": {"license": "apache-2.0"},
            "library_name": "peft",
            "lastModified": "2025-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in sorted(files)],
        }
        self._json(h, info, head)

    def _tree(
        self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, path: str, head: bool
    ) -> None:
        found = self._commit(h, repo_id, rev, head)
        if found is None:
            return
        repo, commit = found
        query = urlsplit(h.path).query
        recursive = "recursive=true" in query.lower()
        prefix = path.rstrip("/") + "/" if path else ""
        entries: dict[str, dict[str, Any]] = {}
        for name, data in sorted(repo.commits[commit].items()):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            dirs = rel.split("/")[:-1]
            for i in range(len(dirs) if recursive else min(1, len(dirs))):
                folder = prefix + "/".join(dirs[: i + 1])
                entries.setdefault(
                    folder,
                    {"type": "directory", "oid": git_blob_id(folder.encode()), "path": folder},
                )
            if recursive or not dirs:
                entries[name] = {
                    "type": "file",
                    "oid": git_blob_id(data),
                    "size": len(data),
                    "path": name,
                }
        self._json(h, list(entries.values()), head)

    def _resolve(
        self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, path: str, head: bool
    ) -> None:
        found = self._commit(h, repo_id, rev, head)
        if found is None:
            return
        repo, commit = found
        data = repo.commits[commit].get(path)
        if data is None:
            self._error(h, 404, "EntryNotFound", f"Entry Not Found for {path}", head, commit)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{git_blob_id(data)}"')
        h.send_header("X-Repo-Commit", commit)
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if not head:
            h.wfile.write(data)

    # ------------------------------------------------------------------ responses

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, payload: Any, head: bool) -> None:
        body = json.dumps(payload).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    @staticmethod
    def _error(
        h: BaseHTTPRequestHandler,
        code: int,
        error_code: str,
        message: str,
        head: bool,
        commit: str | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if error_code:
            h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.end_headers()
        if not head:
            h.wfile.write(body)


@pytest.fixture(scope="session")
def hub_standin() -> Iterator[HubStandIn]:
    """An empty Hub stand-in; a test adds its repos to ``.repos``."""
    hub = HubStandIn([])
    yield hub
    hub.close()
