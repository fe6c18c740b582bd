"""GPU smoke check (``make gpu-smoke``): the real vLLM serves a model behind the real gateway.

For a machine with an NVIDIA GPU; the conformance suite never depends on it. It

1. builds a tiny, randomly initialised Llama-architecture model and its tokenizer on this
   machine (nothing is downloaded),
2. renders an AIStack whose model comes from ``pvc://models/tiny`` (so the rendered argv
   names the mounted directory), starts ``vllm serve`` with exactly the rendered argv and
   env (the claim's mount is this machine's model directory),
3. starts the LiteLLM gateway from the rendered ConfigMap, with the model's Service name
   resolving to this machine,
4. sends a chat completion through the gateway and checks the answer came from the model.

Exit status 0 when the completion came back; the logs of both servers are kept in the work
directory it prints. Run it as ``make gpu-smoke`` (it builds the vLLM and LiteLLM
environments of the suite first) or ``python tests/conformance/gpu_smoke.py``.

``--multi-node`` (``make gpu-smoke GPU_SMOKE_ARGS=--multi-node``; a machine with 2 GPUs or
more) renders the model with ``nodes: 2``, one GPU each (pipeline parallel 2): a
LeaderWorkerSet group of a leader and a headless worker on vLLM's own multi-node backend.
Both pods run here, each with its own GPU (``CUDA_VISIBLE_DEVICES``), started with the
rendered argv and env plus the env LeaderWorkerSet gives each pod of the group
(``harness.lws_env``), except that the leader's address is this machine's loopback, where
the leader listens: in a cluster, DNS resolves the name LeaderWorkerSet gives to the leader
pod. The chat then goes through the gateway to the leader, which runs the first pipeline
stage and the worker the second.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import harness  # noqa: E402

STACK = """\
apiVersion: aistack.dev/v1alpha1
kind: AIStack
metadata: {name: smoke, namespace: default}
spec:
  models:
    - name: tiny
      source: pvc://models/tiny
      license: Apache-2.0
      gpus: 1
      maxModelLen: 256
      gpuMemoryUtilization: 0.2
      extraArgs: ["--enforce-eager"]
  ray: {enabled: false}
  mlflow: {enabled: false}
"""

# Builds the model with the vLLM environment's own transformers and tokenizers.
BUILD_MODEL = textwrap.dedent(
    """
    import sys
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = sys.argv[1]
    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(252)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>",
    )
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}assistant:"
    )
    tok.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, torch_dtype="float16",
    )
    LlamaForCausalLM(config).half().save_pretrained(out, safe_serialization=True)
    """
)


MODEL_DEPLOYMENT = "smoke-vllm-tiny"
GATEWAY_DEPLOYMENT = "smoke-gateway"
#: The multi-node variant's LeaderWorkerSet, and its Service (the model's).
MODEL_LWS = "smoke-vllm-tiny-lws"


def multi_node_stack() -> str:
    """The smoke stack with its model across two nodes of one GPU each."""
    return STACK.replace("      gpus: 1\n", "      gpus: 1\n      nodes: 2\n")


def build_model(claim: Path) -> None:
    claim.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(envs.python("vllm")), "-c", BUILD_MODEL, str(claim)], check=True)


def prepare(work: Path) -> tuple[list[harness.Manifest], harness.ProcessSpec]:
    """Render the smoke stack and build its model where the rendered claim is mounted;
    returns the manifests and the model server's process spec."""
    work.mkdir(parents=True, exist_ok=True)
    stack_file = work / "stack.yaml"
    stack_file.write_text(STACK)
    manifests = harness.render_example(stack_file)
    model = harness.container_process(manifests, MODEL_DEPLOYMENT, workdir=work / "vllm")
    build_model(model.host_path(harness.container(manifests, MODEL_DEPLOYMENT)["args"][0]))
    return manifests, model


def prepare_multi_node(work: Path) -> tuple[list[harness.Manifest], list[harness.ProcessSpec]]:
    """Render the multi-node smoke stack and build its model where both pods mount the
    claim; returns the manifests and the group's pods (leader first) as process specs, each
    on a GPU of its own."""
    work.mkdir(parents=True, exist_ok=True)
    stack_file = work / "stack.yaml"
    stack_file.write_text(multi_node_stack())
    manifests = harness.render_example(stack_file)
    specs = []
    claim: Path | None = None
    for gpu, pod in enumerate(harness.lws_pods(manifests, MODEL_LWS)):
        # The leader's address: where it listens here (see the module's docstring).
        injected = [
            {**e, "value": "127.0.0.1"} if e["name"] == harness.LWS_LEADER_ADDRESS else e
            for e in pod.env
        ]
        spec = harness.container_process(
            manifests, pod.template, workdir=work / pod.name, injected_env=injected,
            field_refs={"status.podIP": "127.0.0.1"},
        )  # fmt: skip
        model_path = harness.container(manifests, pod.template)["args"][0]
        if claim is None:
            claim = spec.host_path(model_path)
            build_model(claim)
        else:  # the same claim, mounted in every pod of the group
            mine = spec.host_path(model_path)
            mine.parent.mkdir(parents=True, exist_ok=True)
            if mine.is_dir():
                mine.rmdir()
            mine.symlink_to(claim, target_is_directory=True)
        spec.env["CUDA_VISIBLE_DEVICES"] = str(gpu)  # a node's GPU
        specs.append(spec)
    return manifests, specs


def main(argv: list[str] | None = None) -> int:
    multi_node = "--multi-node" in (sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="aistack-gpu-smoke-"))
    print(f"gpu-smoke: work directory {work}" + (" (multi-node)" if multi_node else ""))
    vllm_bin = envs.bin_dir("vllm")
    gateway_bin = envs.bin_dir("litellm")
    if multi_node:
        manifests, models = prepare_multi_node(work)
    else:
        manifests, model = prepare(work)
        models = [model]
    hosts = harness.HostMap(work / "hosts")
    hosts.add_services(manifests)
    logs = work / "logs"
    gateway = harness.container_process(manifests, GATEWAY_DEPLOYMENT, workdir=work / "gateway")

    servers = []
    try:
        for i, spec in enumerate(models):
            name = "vllm" if i == 0 else f"vllm-worker-{i}"
            servers.append(harness.start(spec, name=name, bin_dir=vllm_bin, log_dir=logs,
                                         hosts=hosts))  # fmt: skip
        # The leader serves once its whole group's engine is up.
        # (Behind the model's Service: the one server, or the group's leader.)
        servers[0].wait_http(f"http://{hosts.ip(MODEL_DEPLOYMENT)}:8000/health", timeout=900)
        gw = harness.start(gateway, name="gateway", bin_dir=gateway_bin, log_dir=logs, hosts=hosts)
        servers.append(gw)
        base = f"http://{hosts.ip(GATEWAY_DEPLOYMENT)}:4000"
        gw.wait_http(f"{base}/health/readiness", timeout=300)
        code, body = harness.http(
            f"{base}/v1/chat/completions",
            method="POST",
            body={
                "model": "tiny",
                "messages": [{"role": "user", "content": "w1 w2 w3"}],
                "max_tokens": 8,
            },
            timeout=120,
        )
        print(f"gpu-smoke: gateway answered HTTP {code}: {body[:500]!r}")
        if code != 200:
            return 1
        answer = json.loads(body)
        assert answer["choices"][0]["message"]["content"] is not None
        assert answer["usage"]["completion_tokens"] > 0
        print("gpu-smoke: a chat completion came back from vLLM through the gateway")
        return 0
    finally:
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
