"""The license gate's invariant over the whole render, for generated stacks (hypothesis):
every weight reference anywhere in what the operator renders (vLLM's argv, the multi-node
scripts, the init containers that download adapters, the mounts behind a path) is one the
license decision judged and permitted, and every prompt destination in the gateway's
routes is one it permitted.

The stacks are drawn to try the ways around the gate a stack author has: weight-naming
flags in ``extraArgs`` in every spelling vLLM accepts, values where vLLM would read more
adapters, sources and paths with NUL, control characters, ``=`` and ``..``, renamed repos,
drafts, adapters, images and providers. A stack the API refuses is fine (nothing renders);
one it accepts must render nothing the decision did not judge.

The references are read back from the rendered objects independently of the renderer: the
argv as vLLM's parser reads it (``aistack.vllm_flags``, which the conformance suite holds to
vLLM's real parser), ``--lora-modules`` split as vLLM splits it (on the first ``=``), a path
through the pod's own volume mounts to the claim or the init container behind it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aistack import names, vllm_flags
from aistack.api.v1alpha1 import AIStack
from aistack.components import RenderConfig
from aistack.licenses import canonical_repo, decide_stack, draft_of
from aistack.render import render
from helpers import trusting_policy

#: The flags the operator itself renders; any other flag that is not ``allowed`` in the
#: table is a way around the gate, and so is any of these twice (vLLM keeps the last).
OPERATOR_FLAGS = {
    "--served-model-name", "--host", "--port", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--distributed-executor-backend", "--max-model-len",
    "--gpu-memory-utilization", "--revision", "--load-format", "--enable-lora",
    "--max-loras", "--max-lora-rank", "--max-cpu-loras", "--lora-modules",
    "--speculative-config", "--otlp-traces-endpoint",
}  # fmt: skip
#: Environment variables that change where weights come from or what code runs.
DANGEROUS_ENV = ("HF_ENDPOINT", "HF_HUB_", "VLLM_", "PYTHONPATH", "TRANSFORMERS_")
RENDERED_ENV = {"VLLM_CACHE_ROOT", "VLLM_NO_USAGE_STATS", "VLLM_HOST_IP",
                "HF_HUB_DISABLE_UPDATE_CHECK"}  # fmt: skip

# ---------------------------------------------------------------- generated stacks

repo_ids = st.sampled_from(
    [
        "microsoft/phi-4",  # MIT in the catalog
        "mistralai/Mistral-7B-Instruct-v0.3",  # Apache-2.0
        "CohereForAI/c4ai-command-r-plus",  # CC-BY-NC-4.0
        "CohereLabs/c4ai-command-r-plus",  # the same repo, renamed
        "meta-llama/Meta-Llama-3.1-8B-Instruct",  # Llama 3.1, under its old name
        "meta-llama/Llama-3.2-1B-Instruct",
        "acme/unknown-7b",
        "org/nc-lora",
    ]
)
#: Path parts: fine ones, and the ones a path must never hold.
path_parts = st.sampled_from(
    ["approved", "team", "m-1", "a.b", "APPROVED", "q", "--model", "x"] * 8
    + ["..", ".", "a=b", "x\x00y", "new\nline", "sp ace"]
)  # fmt: skip
storage_sources = st.builds(
    lambda scheme, where, parts: f"{scheme}://{where}/" + "/".join(parts),
    st.sampled_from(["pvc", "s3"]),
    st.sampled_from(["weights", "loras", "models-bucket"]),
    st.lists(path_parts, min_size=0, max_size=3),
)
sources = st.one_of(repo_ids, storage_sources)
#: Now and then a revision on a storage source, which the API refuses (it pins nothing).
stray_revision = st.sampled_from([None] * 9 + ["main"])
licenses = st.sampled_from(
    [None, "MIT", "Apache-2.0", "CC-BY-NC-4.0", "Apache-2.0 WITH CC-BY-NC-4.0",
     "Apache-2.0 WITH LLVM-exception", "LicenseRef-llama3.1"]
)  # fmt: skip
revisions = st.sampled_from([None, None, None, "main", "0" * 40])

#: What a stack author might put in extraArgs: harmless tuning, and every way to make vLLM
#: load something else that its parser accepts.
smuggled = [
    ["--speculative-config", '{"model": "meta-llama/Llama-3.2-1B-Instruct", '
                             '"num_speculative_tokens": 3}'],
    ["--speculative_config.model=org/nc-lora"],
    ["-sc", '{"model": "org/nc-lora"}'],
    ["--specul", '{"model": "org/nc-lora"}'],
    ["--enable-lora", "--lora-modules", "nc=org/nc-lora"],
    ["--lora_modules", "nc=pvc-claim/x"],
    ["--tokenizer", "org/nc-lora"],
    ["--hf-config-path", "org/nc-lora"],
    ["--model", "org/nc-lora"],
    ["--model=org/nc-lora"],
    ["--revision", "evil"],
    ["--trust-remote-code"],
    ["--load-format", "tensorizer"],
    ["--model-loader-extra-config", '{"tensorizer_uri": "s3://x/y"}'],
    ["--chat-template", "https://evil.example/t.jinja"],
    ["--config", "/mnt/models/args.yaml"],
    ["x=org/nc-lora"],  # a value first: one more adapter of the operator's --lora-modules
    ["--", "org/nc-lora"],
]  # fmt: skip
harmless = [["--max-num-seqs", "64"], ["--enforce-eager"], ["--seed", "-1"],
            ["--dtype=bfloat16"], ["--enable-prefix-caching"]]  # fmt: skip
extra_args = st.one_of(
    st.just([]),
    st.just([]),
    st.lists(st.sampled_from(harmless), max_size=2),
    st.lists(st.sampled_from(smuggled + harmless), max_size=3),
).map(lambda parts: [item for part in parts for item in part])
images = st.sampled_from(
    [None, "vllm/vllm-openai:v0.30.0", "docker.io/vllm/vllm-openai:v0.34.0",
     "ghcr.io/acme/vllm-evil:1", "registry.example.com/vllm-openai-ray:1"]
)  # fmt: skip


def _with(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return doc | {k: v for k, v in fields.items() if v is not None}


@st.composite
def licensed(draw: st.DrawFn, **fixed: Any) -> dict[str, Any]:
    source = draw(sources)
    storage = source.startswith(("pvc://", "s3://"))
    return _with(
        fixed,
        source=source,
        license=draw(licenses),
        revision=draw(stray_revision if storage else revisions),
    )


@st.composite
def model(draw: st.DrawFn, name: str) -> dict[str, Any]:
    doc = draw(licensed(name=name))
    nodes = draw(st.sampled_from([1, 1, 2]))
    adapters = draw(st.lists(st.sampled_from(["a1", "a2", "a3"]), max_size=2, unique=True))
    speculative = None
    if draw(st.booleans()):
        method = draw(st.sampled_from(["draft_model", "eagle", "ngram"]))
        speculative = {"method": method, "numSpeculativeTokens": 3}
        if method != "ngram":
            speculative |= draw(licensed())
    return _with(
        doc,
        nodes=nodes if nodes > 1 else None,
        gpus=4 if nodes > 1 else None,
        image=draw(images) or ("registry.example.com/vllm-openai-ray:1" if nodes > 1 else None),
        adapters=[draw(licensed(name=f"{name}-{a}")) for a in adapters] or None,
        speculative=speculative,
        extraArgs=draw(extra_args) or None,
    )


providers = st.sampled_from(
    [
        {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini"},
        {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini"},
        {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5"},
        {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
         "apiBase": "https://prompt-collector.attacker.example/v1"},
        {"name": "compat", "provider": "openai-compatible", "model": "m",
         "apiBase": "https://llm.partner.example/v1"},
        {"name": "compat", "provider": "openai-compatible", "model": "m",
         "apiBase": "https://api.openai.com/v1"},
        {"name": "az", "provider": "azure", "model": "dep",
         "apiBase": "https://team.openai.azure.com"},
    ]
)  # fmt: skip


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    model_names = draw(st.lists(st.sampled_from(["m", "n"]), min_size=1, max_size=2, unique=True))
    gateway: dict[str, Any] = {}
    routes = draw(st.lists(providers, max_size=2, unique_by=lambda p: p["name"]))
    if routes:
        gateway["providers"] = [
            p | {"credentialsSecretRef": {"name": "keys", "key": p["name"]}} for p in routes
        ]
        if draw(st.sampled_from([True, True, True, False])):
            gateway["authSecretRef"] = {"name": "gw", "key": "key"}
    vllm = _with({}, image=draw(images), extraArgs=draw(extra_args) or None)
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": "s", "namespace": "team"},
        "spec": {
            "models": [draw(model(n)) for n in model_names],
            "vllm": vllm,
            "gateway": gateway,
            "ray": {"enabled": False},
            "mlflow": {"enabled": False},
        },
    }


policies = st.sampled_from(
    [
        [],  # the built-in default
        [trusting_policy()],
        [trusting_policy(allow=["Apache-2.0", "MIT", "LicenseRef-llama3.1"],
                         providers={"allow": ["openai", "openai-compatible", "azure"],
                                    "hosts": ["llm.partner.example", "*.openai.azure.com"]},
                         images={"allow": ["registry.example.com/vllm-openai-ray"]})],
        [trusting_policy(exceptions=[
            {"model": "pvc://weights/approved", "namespace": "team", "reason": "LEGAL-1"},
            {"model": "s3://models-bucket/approved", "reason": "LEGAL-2"},
            {"model": "CohereForAI/c4ai-command-r-plus", "reason": "LEGAL-3"}])],
    ]
)  # fmt: skip


# ---------------------------------------------------------------- what the decision judged


@dataclass(frozen=True)
class Judged:
    """What the decision permitted: weight sources (with the revision each is loaded at)
    and prompt destinations."""

    weights: frozenset[tuple[str, str | None]]
    #: (route name, host) of each permitted provider route.
    destinations: frozenset[tuple[str, str]]
    #: Model and adapter route names the gateway may send to the stack's model servers.
    served_routes: frozenset[str]

    def weight_ok(self, source: str, revision: str | None) -> bool:
        return any(_same(s, source) and r == revision for s, r in self.weights)


def _same(a: str, b: str) -> bool:
    """Two sources name the same weights: a storage path with or without its trailing
    slash; a Hugging Face repo by any spelling of it."""
    if a.startswith(("pvc://", "s3://")) or b.startswith(("pvc://", "s3://")):
        return a.rstrip("/") == b.rstrip("/")
    return canonical_repo(a) == canonical_repo(b)


def judged(stack: AIStack, verdicts: Mapping[str, Any]) -> Judged:
    weights: set[tuple[str, str | None]] = set()
    served: set[str] = set()
    for m in stack.spec.models:
        if not verdicts[m.name].permitted:
            continue
        weights.add((m.source, m.revision))
        served.add(m.name)
        for a in m.adapters:
            if verdicts[a.name].permitted:
                weights.add((a.source, a.revision))
                served.add(a.name)
        draft = draft_of(m)
        if draft is not None and verdicts[names.speculative_key(m.name)].permitted:
            weights.add((draft.source, draft.revision))
    destinations = {
        (p.name, p.host) for p in stack.spec.gateway.providers if verdicts[p.name].permitted
    }
    return Judged(frozenset(weights), frozenset(destinations), frozenset(served))


# ---------------------------------------------------------------- what the render holds


def _pod(deploy: Mapping[str, Any]) -> Mapping[str, Any]:
    return deploy["spec"]["template"]["spec"]


def _containers(deploy: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    pod = _pod(deploy)
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def vllm_argvs(container: Mapping[str, Any]) -> Iterator[list[str]]:
    """What follows ``vllm serve`` in a container: its args, or inside its shell script."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command == ["vllm", "serve"]:
        yield args
    elif command[-1:] == ["-c"] or command[:1] == ["/bin/bash"]:
        for line in (args[0] if args else "").splitlines():
            words = shlex.split(line)
            while words and words[0] in ("exec", "env"):
                words = words[1:]
            if words[:2] == ["vllm", "serve"]:
                yield words[2:]


@dataclass
class Reference:
    """A weight reference found in the render: a Hugging Face repo or storage URL, or a
    path in the pod, at a revision."""

    value: str
    revision: str | None
    where: str


def _values(argv: Sequence[str], start: int) -> list[str]:
    out = []
    for item in argv[start:]:
        if vllm_flags.resolve(item) is not None:
            break
        out.append(item)
    return out


def argv_references(argv: Sequence[str], where: str) -> tuple[list[Reference], list[str]]:
    """The weight references of one ``vllm serve`` argv, read as vLLM reads it, and the
    problems found on the way (a flag that is not allowed and not the operator's, an
    operator flag twice)."""
    refs: list[Reference] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    revision = None
    model = None
    for i, item in enumerate(argv):
        if any(ord(c) < 32 for c in item):
            problems.append(f"{where}: argv item {i} holds a control character: {item!r}")
        try:
            flag = vllm_flags.resolve(item)
        except vllm_flags.FlagError as exc:
            problems.append(f"{where}: argv item {i} ({item!r}) is no flag vLLM knows: {exc}")
            continue
        if flag is None:
            if i == 0:
                model = item
            continue
        if flag.kind != "allowed" and flag.name not in OPERATOR_FLAGS:
            problems.append(f"{where}: {item!r} is {flag.name}, which the operator never sets")
        if flag.name in OPERATOR_FLAGS and not item.startswith(flag.name):
            problems.append(f"{where}: {item!r} is another spelling of {flag.name}")
        seen[flag.name] = seen.get(flag.name, 0) + 1
        values = _values(argv, i + 1)
        if flag.name == "--revision":
            revision = values[0] if values else None
        elif flag.name == "--lora-modules":
            for value in values:
                name, _, path = value.partition("=")  # vLLM splits on the first "="
                refs.append(Reference(path, None, f"{where}: --lora-modules {name}"))
        elif flag.name == "--speculative-config":
            config = json.loads(values[0])
            if "model" in config:
                refs.append(Reference(config["model"], config.get("revision"),
                                      f"{where}: --speculative-config"))  # fmt: skip
        elif flag.loads and flag.name not in ("--load-format",):
            refs += [Reference(v, None, f"{where}: {flag.name}") for v in values]
    problems += [
        f"{where}: {flag} appears {n} times"
        for flag, n in seen.items()
        if n > 1 and flag in OPERATOR_FLAGS
    ]
    if model is None:
        problems.append(f"{where}: no model")
    else:
        refs.insert(0, Reference(model, revision, f"{where}: the model"))
    return refs, problems


def fetched(deploy: Mapping[str, Any]) -> dict[str, Reference]:
    """What the pod's init containers download, by destination path."""
    out: dict[str, Reference] = {}
    for c in _pod(deploy).get("initContainers") or []:
        cmd = list(c.get("command") or [])
        where = f"init container {c['name']}"
        if cmd[:2] == ["hf", "download"]:
            rev = cmd[cmd.index("--revision") + 1] if "--revision" in cmd else None
            out[cmd[cmd.index("--local-dir") + 1]] = Reference(cmd[2], rev, where)
        elif cmd[:2] == ["python3", "-c"]:
            out[cmd[4]] = Reference(cmd[3], None, where)
    return out


def resolve_path(
    deploy: Mapping[str, Any], container: Mapping[str, Any], ref: Reference
) -> Reference | None:
    """What a path in a pod is: a claim's path (``pvc://``), or what an init container
    downloaded there; None when it is neither (nothing judged can be behind it)."""
    mounts = sorted(container.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"]))
    volumes = {v["name"]: v for v in _pod(deploy).get("volumes") or []}
    for m in mounts:
        root = m["mountPath"].rstrip("/")
        if ref.value != root and not ref.value.startswith(root + "/"):
            continue
        claim = (volumes[m["name"]].get("persistentVolumeClaim") or {}).get("claimName")
        rest = ref.value[len(root) :].lstrip("/")
        if m.get("readOnly") and claim:
            return Reference(f"pvc://{claim}/{rest}".rstrip("/"), ref.revision, ref.where)
        return fetched(deploy).get(ref.value)
    return None


def weight_problems(manifests: list[dict[str, Any]], allowed: Judged) -> list[str]:
    problems: list[str] = []
    for deploy in (m for m in manifests if m["kind"] == "Deployment"):
        if deploy["spec"]["replicas"] == 0:
            continue  # runs no pod
        name = deploy["metadata"]["name"]
        for container in _containers(deploy):
            for env in container.get("env") or []:
                bad = env["name"].startswith(DANGEROUS_ENV) and env["name"] not in RENDERED_ENV
                if bad:
                    problems.append(f"{name}: env {env['name']} changes what is loaded")
            for argv in vllm_argvs(container):
                refs, found = argv_references(argv, f"{name}/{container['name']}")
                problems += found
                for ref in refs:
                    real = (
                        resolve_path(deploy, container, ref) if ref.value.startswith("/") else ref
                    )
                    if real is None:
                        problems.append(f"{ref.where}: {ref.value} is no judged weight's path")
                    elif not allowed.weight_ok(real.value, real.revision):
                        problems.append(
                            f"{ref.where}: loads {real.value}@{real.revision}, which the "
                            "decision did not judge and permit"
                        )
            for ref in fetched(deploy).values():
                if not allowed.weight_ok(ref.value, ref.revision):
                    problems.append(f"{name}: {ref.where} downloads {ref.value}@{ref.revision}")
    return problems


def destination_problems(
    manifests: list[dict[str, Any]], stack: AIStack, allowed: Judged
) -> list[str]:
    problems: list[str] = []
    for cm in (m for m in manifests if m["kind"] == "ConfigMap"):
        config = json.loads(json.dumps(_yaml(cm["data"]["config.yaml"])))
        for route in config.get("model_list") or []:
            params = route["litellm_params"]
            name = route["model_name"]
            if params["model"].startswith("hosted_vllm/"):
                host = urlsplit(params["api_base"]).hostname or ""
                ok = name in allowed.served_routes and host.endswith(
                    f".{stack.metadata.namespace}.svc.cluster.local"
                )
            else:
                provider = next(p for p in stack.spec.gateway.providers if p.name == name)
                host = provider.host
                if "api_base" in params:
                    host = (urlsplit(params["api_base"]).hostname or "").lower()
                ok = (name, host) in allowed.destinations
            if not ok:
                problems.append(f"the gateway routes {name} to {host}, which was not permitted")
    return problems


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _opted_in(name: str) -> Mapping[str, str] | None:
    return {names.PROVIDER_CREDENTIALS_LABEL: "true"}


# ---------------------------------------------------------------- the property

#: Stacks the API refused and stacks it accepted, over the run (the test shows both).
SEEN = {"refused": 0, "rendered": 0}


@settings(max_examples=1800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=stacks(), cluster_policies=policies)
def test_everything_rendered_was_judged_and_permitted(
    doc: dict[str, Any], cluster_policies: list[dict[str, Any]]
) -> None:
    try:
        stack = AIStack.model_validate(doc)
    except ValidationError:
        SEEN["refused"] += 1
        return
    SEEN["rendered"] += 1
    defaults = tuple(RenderConfig().images.values())
    verdicts = decide_stack(stack, cluster_policies, secrets=_opted_in, default_images=defaults)
    manifests = render(stack, {k: v.permitted for k, v in verdicts.items()}, RenderConfig())
    allowed = judged(stack, verdicts)
    problems = weight_problems(manifests, allowed) + destination_problems(manifests, stack, allowed)
    assert problems == [], "\n".join(problems)


def test_the_generated_stacks_try_both_ways() -> None:
    # Run after the property (pytest keeps the file's order): the generator produced
    # stacks the API refuses, and at least 500 it renders: the property held for them.
    assert SEEN["refused"] >= 100 and SEEN["rendered"] >= 500, SEEN


def test_the_extractor_finds_a_smuggled_draft() -> None:
    # The reader of the render is itself tested: a render with a smuggled draft and an
    # extra adapter, and a path no claim or download is behind, is caught.
    deploy = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1, "template": {"spec": {
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "containers": [{"name": "vllm", "command": ["vllm", "serve"],
                            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                            "args": ["org/ok", "--speculative-config", '{"model": "org/nc"}',
                                     "--lora-modules", "a=/cache/adapters/a", "x=org/nc"]}],
        }}},
    }  # fmt: skip
    allowed = Judged(frozenset({("org/ok", None)}), frozenset(), frozenset())
    problems = weight_problems([deploy], allowed)
    assert any("--speculative-config: loads org/nc" in p for p in problems), problems
    assert any("is no judged weight's path" in p for p in problems), problems
    assert any("--lora-modules x: loads org/nc" in p for p in problems), problems
