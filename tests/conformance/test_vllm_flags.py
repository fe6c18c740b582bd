"""vLLM conformance of the extraArgs gate (``aistack.vllm_flags``): the table of ``vllm serve``
flags is the real parser's, and vLLM reads every spelling as the gate does.

One process of the vLLM environment (the default image's vLLM and packages) builds the
``serve`` parser as ``vllm serve`` does (``vllm_check.serve_parsers``) and parses every case
with it, recording what vLLM does with each item: the arguments after
``FlexibleArgumentParser``'s rewriting, what argparse took each of them as (an action, a
value, an unknown or ambiguous option), and whether ``--config`` read a file. Then:

- the option strings of the parser's actions are exactly the table's, grouped as its rows
  (a new vLLM flag fails here until it is classified; a flag vLLM dropped, until removed);
- the gate's assumptions about the parser hold (abbreviations on, no ``@file``, no option
  that looks like a negative number);
- each spelling ``resolve`` understands of every flag the gate does not allow (every option
  string, ``=value``, underscores, dotted JSON keys, unambiguous abbreviations, short
  options with the value attached) is that flag to vLLM, and ``extra_args_problems``
  refuses it; every option string of an allowed flag is that flag to vLLM;
- what ``resolve`` takes for a value, vLLM takes for a value; what it refuses as unknown,
  ambiguous or mangled, vLLM does not read as the flag it seems to be.

``python tests/conformance/test_vllm_flags.py`` prints the parser's actions that the table
lacks or lists differently, as rows to classify.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import envs
import harness
import pytest

from aistack import vllm_flags
from aistack.vllm_flags import Flag, FlagError, extra_args_problems, resolve, table

HERE = Path(__file__).resolve().parent

FIELD = "spec.models[0].extraArgs"
MODEL = "org/model"
VALUE = "v"
PROBE_TIMEOUT = 600

#: Run by the vLLM environment's Python: ``probe.py CONFORMANCE_DIR CASES_JSON``.
PROBE = r"""
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[1])
import vllm_check

vllm_check._defaults()
parser, serve, _ = vllm_check.serve_parsers()
strings = {}
for option, action in serve._option_string_actions.items():
    strings.setdefault(id(action), []).append(option)
taken, processed, configs = [], [], []

def name(action):
    return strings[id(action)][0]

parse_optional = serve._parse_optional
def recording_parse_optional(arg):
    try:
        found = parse_optional(arg)
    except SystemExit:
        taken.append([arg, "ambiguous"])
        raise
    if found is None:
        taken.append([arg, "value"])
    elif found[0] is None:
        taken.append([arg, "unknown"])
    else:
        taken.append([arg, name(found[0])])
    return found
serve._parse_optional = recording_parse_optional

parse_known_args = parser.parse_known_args
def recording_parse_known_args(args=None, namespace=None):
    processed.append(list(args))
    return parse_known_args(args, namespace)
parser.parse_known_args = recording_parse_known_args
parser.load_config_file = lambda path: configs.append(path) or []

results = []
for case in json.load(open(sys.argv[2])):
    del taken[:], processed[:], configs[:]
    error = ""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parser.parse_args(["serve", *case])
    except SystemExit as exc:
        error = f"exit {exc.code}: {out.getvalue().strip()[-300:]}"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    results.append({
        "taken": list(taken),
        "processed": processed[0][1:] if processed else None,
        "config": list(configs),
        "error": error,
    })
print("VLLM_FLAGS " + json.dumps({
    "actions": [strings[id(a)] for a in serve._actions if a.option_strings],
    "allow_abbrev": serve.allow_abbrev,
    "fromfile_prefix_chars": serve.fromfile_prefix_chars,
    "prefix_chars": serve.prefix_chars,
    "negative_number_options": bool(serve._has_negative_number_optionals),
    "results": results,
}))
"""


@dataclass
class Probe:
    """What the real parser did: its actions (option strings of each, in registration
    order), its settings, and one result per case."""

    actions: list[list[str]]
    settings: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)

    def options(self, result: dict[str, Any]) -> list[str]:
        """The flags (first option string of each action) argparse took items as."""
        return [r for _, r in result["taken"] if r not in ("value", "unknown", "ambiguous")]


def run_probe(cases: list[list[str]], work: Path) -> Probe:
    work.mkdir(parents=True, exist_ok=True)
    (work / "probe.py").write_text(PROBE)
    (work / "cases.json").write_text(json.dumps(cases))
    env = harness.base_env(envs.bin_dir("vllm"), work)
    proc = subprocess.run(
        [str(envs.python("vllm")), str(work / "probe.py"), str(HERE), str(work / "cases.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_FLAGS ")]
    if proc.returncode != 0 or len(lines) != 1:
        raise AssertionError(
            f"probe exit {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    data = json.loads(lines[0][len("VLLM_FLAGS ") :])
    results = data.pop("results")
    actions = data.pop("actions")
    return Probe(actions=actions, settings=data, results=results)


# ----------------------------------------------------------------- the cases


def flags() -> list[Flag]:
    """Each flag of the table once, in its order."""
    return list({id(f): f for f in table().values()}.values())


def abbreviations(option: str) -> list[str]:
    """The shortest and the longest proper prefix of ``option`` that argparse's
    ``_get_option_tuples`` matches to ``option`` alone."""
    options = table()
    found = []
    for end in range(2, len(option)):
        prefix = option[:end]
        if prefix == "--":
            continue
        if option.startswith("--"):
            matches = [o for o in options if o.startswith(prefix)]
        else:
            matches = [o for o in options if o == prefix[:2] or o.startswith(prefix)]
        if matches == [option]:
            found.append(prefix)
    return sorted({found[0], found[-1]}) if found else []


def spellings(flag: Flag) -> list[list[str]]:
    """Argument lists (a spelling of ``flag`` and its value) in every form of the module
    docstring of ``aistack.vllm_flags``; some are no flag to vLLM (e.g. ``-t=2``), which
    the check holds ``resolve`` to as well."""
    out: list[list[str]] = []
    for option in flag.options:
        names = [option, *abbreviations(option)]
        names += [
            "--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:]
        ]
        for name in names:
            out += [[name, VALUE], [f"{name}={VALUE}"], [f"{name}.key", VALUE]]
            out += [[f"{name}.key.inner={VALUE}"], [f"{name}.list+", VALUE]]
            if not name.startswith("--"):
                out.append([name + VALUE])
    return out


#: Items that are values (after a flag that takes one string), that the gate refuses
#: without naming a flag, that vLLM's rewriting mangles, and -O: each list with the index of
#: the item under test.
VALUE_FLAG = "--response-role"
OTHER_CASES: list[tuple[list[str], int]] = [
    *(([VALUE_FLAG, v], 1) for v in ["-1", "-100", "0.5", "x=y", '{"model": "x"}', "", "-"]),
    *(
        ([VALUE_FLAG, v], 1)
        for v in ["--tokenizer x", "-x y", "@args.txt", "--speculative-config x"]
    ),
    *(([item, VALUE], 0) for item in ["--tok", "--spec", "--conf", "-d", "-a", "--no-such-flag"]),
    *(([item, VALUE], 0) for item in ["-tp2", "-t=2", "-1e5", "--omni", "--", "--=x", "--.key"]),
    (["--max-num-seqs", "-0.5", "x"], 1),
    (["-O3"], 0),
    (["-O", "3"], 0),
    (["-O=2"], 0),
    (["-O--tokenizer=x"], 0),
]


@dataclass
class Case:
    argv: list[str]
    #: The flag the spelling was made from (None: OTHER_CASES).
    flag: Flag | None = None
    #: The index of the item under test.
    at: int = 0

    @property
    def item(self) -> str:
        return self.argv[self.at]


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for flag in flags():
        if flag.kind == "allowed":
            cases += [Case([o, VALUE], flag) for o in flag.options]
        else:
            cases += [Case(argv, flag) for argv in spellings(flag)]
    return cases + [Case(argv, at=at) for argv, at in OTHER_CASES]


@pytest.fixture(scope="module")
def probe(vllm_env: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Probe, list[Case]]:
    cases = all_cases()
    found = run_probe([[MODEL, *c.argv] for c in cases], tmp_path_factory.mktemp("vllm-flags"))
    assert len(found.results) == len(cases)
    return found, cases


# ----------------------------------------------------------------- the tests


def test_table_lists_exactly_the_parsers_flags(probe: tuple[Probe, list[Case]]) -> None:
    found, _ = probe
    real = {o for action in found.actions for o in action}
    listed = set(table())
    unclassified, stale = sorted(real - listed), sorted(listed - real)
    assert not unclassified and not stale, (
        f"vLLM {vllm_flags.VLLM_VERSION}'s serve parser and data/vllm-serve-flags.tsv differ: "
        f"unclassified option strings {unclassified}; stale option strings {stale}"
    )
    rows = sorted(" ".join(f.options) for f in flags())
    assert rows == sorted(" ".join(a) for a in found.actions), "rows group options unlike vLLM"


def test_parser_reads_items_as_the_gate_assumes(probe: tuple[Probe, list[Case]]) -> None:
    found, _ = probe
    assert found.settings == {
        "allow_abbrev": True,
        "fromfile_prefix_chars": None,
        "prefix_chars": "-",
        "negative_number_options": False,
    }


def _as_flag(flag: Flag, case: Case, result: dict[str, Any], found: Probe) -> list[str]:
    """``resolve`` read the first item as ``flag``: vLLM must too, and a flag the gate does
    not allow must be refused by ``extra_args_problems``, naming it."""
    out = []
    if case.flag is not None and flag is not case.flag:
        out.append(f"{case.argv}: made from {case.flag.name}, resolved to {flag.name}")
    taken = {table()[o].name for o in found.options(result)}
    hoisted = flag.name == "--model" and (result["processed"] or [])[:1] == [VALUE]
    config = flag.name == "--config" and bool(result["config"])
    if taken - {flag.name} or not (taken or hoisted or config):
        out.append(f"{case.argv}: {flag.name} to the gate, {result['taken']} to vLLM")
    if flag.kind != "allowed":
        problems = extra_args_problems(case.argv, FIELD)
        if not any(p.startswith(f"{FIELD}[0]: {flag.name} ") for p in problems):
            out.append(f"{case.argv}: extra_args_problems gave {problems}")
    return out


def _as_value(case: Case, result: dict[str, Any], found: Probe) -> list[str]:
    """``resolve`` read the item as a value: vLLM must take it as one, untouched."""
    if [case.item, "value"] in result["taken"] and case.item in (result["processed"] or []):
        return []
    return [f"{case.argv}: {case.item!r} is a value to the gate, {result} to vLLM"]


def _refused(error: FlagError, case: Case, result: dict[str, Any]) -> list[str]:
    """``resolve`` refused the item: vLLM must fail on it the same way (a mangled item is
    refused whatever vLLM makes of it)."""
    if not extra_args_problems(case.argv, FIELD):
        return [f"{case.argv}: refused by resolve, passed by extra_args_problems"]
    troubles = {r for _, r in result["taken"]}
    agrees = {
        "unknown": "unknown" in troubles and bool(result["error"]),
        "ambiguous": "ambiguous" in troubles and bool(result["error"]),
        "end": "--" in (result["processed"] or []) and bool(result["error"]),
        "mangled": True,
    }[error.trouble]
    return [] if agrees else [f"{case.argv}: {error.trouble} to the gate, {result} to vLLM"]


def test_vllm_reads_every_spelling_as_the_gate(probe: tuple[Probe, list[Case]]) -> None:
    found, cases = probe
    wrong: list[str] = []
    understood: set[str] = set()
    for case, result in zip(cases, found.results, strict=True):
        try:
            flag = resolve(case.item)
        except FlagError as exc:
            wrong += _refused(exc, case, result)
            continue
        if flag is not None:
            understood.add(flag.name)
            wrong += _as_flag(flag, case, result, found)
        else:
            wrong += _as_value(case, result, found)
    assert not wrong, f"{len(wrong)} disagreements:\n" + "\n".join(wrong[:40])
    assert understood == {f.name for f in flags()}


def test_vllm_mangles_what_the_gate_refuses_as_mangled(probe: tuple[Probe, list[Case]]) -> None:
    found, cases = probe
    results = {tuple(c.argv): r for c, r in zip(cases, found.results, strict=True)}
    # "-0.5" is the dotted key "-0" (a value to argparse) with "x" as its value.
    minus = results[("--max-num-seqs", "-0.5", "x")]
    assert ["-0", "value"] in minus["taken"] and "-0.5" not in minus["processed"], minus
    # The rest of an -O item is an item of its own, here a flag the gate sets.
    rest = results[("-O--tokenizer=x",)]
    assert "--tokenizer" in found.options(rest), rest
    for argv in [("-O3",), ("-O", "3"), ("-O=2",)]:
        assert found.options(results[argv]) == ["--optimization-level"], results[argv]


def main() -> int:
    """Print the parser's actions the table lacks or groups differently, as rows."""
    with tempfile.TemporaryDirectory() as work:
        found = run_probe([], Path(work))
    listed = {" ".join(f.options) for f in flags()}
    real = {" ".join(a) for a in found.actions}
    for row in sorted(real - listed):
        print(f"{row}\t?\t?\tnew in vLLM's parser: classify")
    for row in sorted(listed - real):
        print(f"{row}\t-\t-\tnot in vLLM's parser: remove")
    return 1 if real != listed else 0


if __name__ == "__main__":
    sys.exit(main())
