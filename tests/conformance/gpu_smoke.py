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


def prepare(work: Path) -> tuple[list[harness.Manifest], harness.ProcessSpec]:
    """Render the smoke stack and build its model where the rendered claim is mounted;
    returns the manifests and the model server's process spec."""
    work.mkdir(parents=True, exist_ok=True)
    stack_file = work / "stack.yaml"
    stack_file.write_text(STACK)
    manifests = harness.render_example(stack_file)
    model = harness.container_process(manifests, MODEL_DEPLOYMENT, workdir=work / "vllm")
    claim = model.host_path(harness.container(manifests, MODEL_DEPLOYMENT)["args"][0])
    claim.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(envs.python("vllm")), "-c", BUILD_MODEL, str(claim)], check=True)
    return manifests, model


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="aistack-gpu-smoke-"))
    print(f"gpu-smoke: work directory {work}")
    vllm_bin = envs.bin_dir("vllm")
    gateway_bin = envs.bin_dir("litellm")
    manifests, model = prepare(work)
    hosts = harness.HostMap(work / "hosts")
    hosts.add_services(manifests)
    logs = work / "logs"
    gateway = harness.container_process(manifests, GATEWAY_DEPLOYMENT, workdir=work / "gateway")

    servers = []
    try:
        vllm = harness.start(model, name="vllm", bin_dir=vllm_bin, log_dir=logs, hosts=hosts)
        servers.append(vllm)
        vllm.wait_http(f"http://{hosts.ip(MODEL_DEPLOYMENT)}:8000/health", timeout=900)
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
