"""The extraArgs gate (aistack.vllm_flags): its table of ``vllm serve`` flags, and how it
reads each spelling of an item. tests/conformance/test_vllm_flags.py holds both to the real
vLLM parser; these tests need no vLLM."""

from __future__ import annotations

from importlib import resources

import pytest

from aistack import vllm_flags
from aistack.components import VERSIONS
from aistack.vllm_flags import Flag, FlagError, extra_args_problems, resolve, table

FIELD = "spec.models[0].extraArgs"

#: Flags that can load weights, code or files, or that the operator sets: never allowed.
DANGEROUS = [
    "--model",
    "--speculative-config",
    "-sc",
    "--spec-model",
    "--spec-method",
    "--lora-modules",
    "--default-mm-loras",
    "--tokenizer",
    "--trust-remote-code",
    "--load-format",
    "--model-loader-extra-config",
    "--download-dir",
    "--chat-template",
    "--hf-overrides",
    "--hf-config-path",
    "--hf-token",
    "--served-model-name",
    "--revision",
    "--code-revision",
    "--tokenizer-revision",
    "--config",
    "--worker-cls",
    "--worker-extension-cls",
    "--scheduler-cls",
    "--logits-processors",
    "--tool-parser-plugin",
    "--reasoning-parser-plugin",
    "--middleware",
    "--io-processor-plugin",
    "--model-class-overrides",
    "--kv-transfer-config",
    "--ec-transfer-config",
    "--compilation-config",
    "-cc",
    "--structured-outputs-config",
    "--logging-config",
    "--weight-transfer-config",
    "--mm-processor-kwargs",
    "--allowed-local-media-path",
    "--allowed-media-domains",
    "--generation-config",
    "--host",
    "--port",
    "--uds",
    "--root-path",
    "--api-key",
    "--ssl-keyfile",
    "--otlp-traces-endpoint",
    "--headless",
    "--data-parallel-address",
    "-dpa",
    "--tensor-parallel-size",
    "-tp",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--help",
    "-h",
]


def flags() -> list[Flag]:
    return list({id(f): f for f in table().values()}.values())


def test_table_parses_and_rows_are_consistent() -> None:
    rows = flags()
    assert len(rows) > 300
    for flag in rows:
        assert flag.kind in ("allowed", "operator", "refused")
        assert flag.name.startswith("--") and flag.name in flag.options
        assert all(table()[o] is flag for o in flag.options)
        if flag.kind == "allowed":
            assert not flag.loads and not flag.note, flag
        else:
            assert flag.note, flag
        if flag.kind == "operator":
            assert flag.note.startswith(("spec.", "the operator")), flag


def test_version_is_the_default_images() -> None:
    assert VERSIONS["vllm"] == vllm_flags.VLLM_VERSION
    text = resources.files("aistack").joinpath("data/vllm-serve-flags.tsv").read_text()
    assert f"# vllm: {vllm_flags.VLLM_VERSION} " in text


@pytest.mark.parametrize("option", DANGEROUS)
def test_dangerous_flags_are_not_allowed(option: str) -> None:
    assert table()[option].kind != "allowed"


def test_rows_that_load_are_not_allowed() -> None:
    loading = [f for f in flags() if f.loads]
    assert loading and all(f.kind != "allowed" for f in loading)


def test_the_operators_flags_name_their_fields() -> None:
    notes = {o: table()[o].note for o in ["--model", "--speculative-config", "--lora-modules"]}
    assert notes == {
        "--model": "spec.models[].source",
        "--speculative-config": "spec.models[].speculative",
        "--lora-modules": "spec.models[].adapters",
    }
    assert table()["--revision"].note == "spec.models[].revision"
    assert table()["-tp"].note == "spec.models[].tensorParallelSize"
    assert table()["--served-model-name"].note == "spec.models[].name"


#: Spellings vLLM 0.34.0 reads as the flag (see the module docstring of aistack.vllm_flags).
SPELLINGS = [
    (["--speculative-config", '{"model": "org/unlicensed"}'], "--speculative-config"),
    (['--speculative-config={"model": "org/unlicensed"}'], "--speculative-config"),
    (["--speculative_config", "{}"], "--speculative-config"),
    (["--speculative-config.model", "org/unlicensed"], "--speculative-config"),
    (["--speculative-config.model=org/unlicensed"], "--speculative-config"),
    (["--speculative_config.draft_load_config.load_format=x"], "--speculative-config"),
    (["--speculative-config.list+", "a,b"], "--speculative-config"),
    (["-sc", "{}"], "--speculative-config"),
    (["-sc.model", "org/unlicensed"], "--speculative-config"),
    (["-sc={}"], "--speculative-config"),
    (["-s", "{}"], "--speculative-config"),
    (["--specul", "{}"], "--speculative-config"),
    (["--specul.model=x"], "--speculative-config"),
    (["--lora-modules", "x=org/unlicensed"], "--lora-modules"),
    (["--lora_modules=x=org/unlicensed"], "--lora-modules"),
    (["--lora-mod", "x=y"], "--lora-modules"),
    (["--trust-remote-code"], "--trust-remote-code"),
    (["--trust_remote_code"], "--trust-remote-code"),
    (["--trust-rem"], "--trust-remote-code"),
    (["--no-trust-remote-code"], "--trust-remote-code"),
    (["--tokenizer=org/unlicensed"], "--tokenizer"),
    (["--model", "org/unlicensed"], "--model"),
    (["--model=org/unlicensed"], "--model"),
    (["--config", "args.yaml"], "--config"),
    (["--config=args.yaml"], "--config"),
    (["--help"], "--help"),
    (["--help=all"], "--help"),
    (["-hq"], "--help"),
    (["-tp", "2"], "--tensor-parallel-size"),
    (["-tp=2"], "--tensor-parallel-size"),
    (["-t", "2"], "--tensor-parallel-size"),
    (["-n2"], "--nnodes"),
    (["--no-enable-lora"], "--enable-lora"),
    (["--disable-lora"], "--enable-lora"),
    (["--device-memory-utilization", "0.5"], "--gpu-memory-utilization"),
    (["--hf-token"], "--hf-token"),
    (["-cc.backend=my.module.fn"], "--compilation-config"),
]


@pytest.mark.parametrize(("argv", "name"), SPELLINGS)
def test_every_spelling_of_a_flag_that_is_not_allowed_is_refused(
    argv: list[str], name: str
) -> None:
    assert resolve(argv[0]) is table()[name]
    problems = extra_args_problems(argv, FIELD)
    assert len(problems) == 1 and problems[0].startswith(f"{FIELD}[0]: {name} "), problems


def test_messages_name_the_field_to_use_or_the_reason() -> None:
    assert extra_args_problems(["--max-num-seqs", "8", "-sc", "{}"], "spec.vllm.extraArgs") == [
        "spec.vllm.extraArgs[2]: --speculative-config is set by the operator from "
        "spec.models[].speculative; use that field instead"
    ]
    note = table()["--trust-remote-code"].note
    assert extra_args_problems(["--trust-remote-code"], FIELD) == [
        f"{FIELD}[0]: --trust-remote-code is refused in extraArgs: {note}"
    ]
    (port,) = extra_args_problems(["--port", "9000"], FIELD)
    assert port.startswith(f"{FIELD}[0]: --port is set by the operator: ")


ALLOWED = [
    "--max-num-seqs",
    "64",
    "--max_num_batched_tokens=8k",
    "--enable-prefix-caching",
    "--no-enable-chunked-prefill",
    "--kv-cache-dtype",
    "fp8",
    "-q",
    "awq",
    "--dtype=bfloat16",
    "--enforce-eager",
    "--block-size",
    "32",
    "--seed",
    "-1",
    "--max-logprobs",
    "-1",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--reasoning-parser",
    "deepseek_r1",
    "--disable-log-requests",
    "-O3",
    "--override-generation-config",
    '{"temperature": 0.5}',
    "--limit-mm-per-prompt.image",
    "4",
    "--cudagraph-capture-sizes",
    "1",
    "2",
    "4",
]


def test_allowed_flags_and_their_values_pass() -> None:
    assert extra_args_problems(ALLOWED, FIELD) == []
    assert extra_args_problems([], FIELD) == []


@pytest.mark.parametrize(
    "item", ["-1", "-100", "0.5", "x=y", '{"model": "x"}', "", "-", "@args", "--tokenizer x"]
)
def test_values_are_values(item: str) -> None:
    assert resolve(item) is None
    assert extra_args_problems(["--response-role", item], FIELD) == []


@pytest.mark.parametrize(
    ("item", "trouble", "says"),
    [
        ("--", "end", "positional"),
        ("--.key", "end", "lone --"),
        ("--no-such-flag", "unknown", "is not a flag of vllm serve at vLLM 0.34.0"),
        ("-tp2", "unknown", "is not a flag of vllm serve"),
        ("-1e5", "unknown", "is not a flag of vllm serve"),
        ("--omni", "unknown", "the operator refuses flags it cannot classify"),
        ("--tok", "ambiguous", "--tokenizer"),
        ("--spec=x", "ambiguous", "--spec-model"),
        ("-d", "ambiguous", "-dp"),
        ("-0.5", "mangled", "--flag=-0.5"),
        ("-.5", "mangled", "dotted JSON key"),
        ("-O--tokenizer=x", "mangled", "--optimization-level"),
    ],
)
def test_items_the_operator_cannot_classify_are_refused(item: str, trouble: str, says: str) -> None:
    with pytest.raises(FlagError) as caught:
        resolve(item)
    assert caught.value.trouble == trouble
    (problem,) = extra_args_problems(["--max-num-seqs", "8", item], FIELD)
    assert problem.startswith(f"{FIELD}[2]: ") and says in problem, problem


def test_a_list_that_starts_with_a_value_is_refused() -> None:
    # After the operator's --lora-modules, a leading value would be one more adapter.
    (problem,) = extra_args_problems(["extra=org/unlicensed", "--enforce-eager"], FIELD)
    assert problem.startswith(f"{FIELD}[0]: the first item is a value"), problem
    assert "--lora-modules" in problem
