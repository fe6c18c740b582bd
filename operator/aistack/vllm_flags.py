"""The flags of ``vllm serve`` and which of them a stack may pass in ``extraArgs``.

The operator renders ``vllm serve <model> <its own flags> <spec.vllm.extraArgs>
<spec.models[].extraArgs>``. A flag in extraArgs could otherwise load weights, code or files
the license check never saw (a draft model in ``--speculative-config``, ``--lora-modules``, a
``--tokenizer`` repo, remote code, a plugin to import), or override what the operator set
from the spec. ``data/vllm-serve-flags.tsv`` classifies every flag of the default vLLM's
``serve`` parser (the conformance suite holds it equal to the real parser's): ``allowed``
(tuning), ``operator`` (set from a spec field) or ``refused``.

An item of extraArgs is judged as vLLM 0.34.0 reads it, so that no spelling slips through.
``vllm serve`` parses ``["serve", *args]`` with ``FlexibleArgumentParser.parse_args``, which
first rewrites the items, then hands them to argparse (Python's, on the ``serve`` subparser):

1. An item ``--x`` gets its name (before the first ``=``, up to the first ``.``) turned from
   underscores into dashes: ``--speculative_config`` is ``--speculative-config``.
2. An item ``-O<rest>`` (one dash) becomes ``--optimization-level <rest>`` (``-O=<rest>``
   too); ``-O`` followed by 0-3 becomes ``--optimization-level``.
3. An item that starts with ``-`` and has a ``.`` before its first ``=`` (or at all, with no
   ``=``) is a dotted JSON key: ``--speculative-config.model x`` (or ``.model=x``) becomes
   ``--speculative-config '{"model": "x"}'``, appended after all the others; the part
   before the first ``.`` (a trailing ``+`` dropped) is what argparse then reads as an
   option. So ``-0.5`` is read as the key ``-0`` (a value to argparse), not as a number.
4. ``--model x`` / ``--model=x`` is moved to the front as the model, and an item ``--config``
   reads more arguments from a YAML file (both are refused here as flags).
5. argparse (``allow_abbrev`` on, no ``fromfile_prefix_chars``, no option that looks like a
   negative number): an exact option string; ``--flag=value``; an unambiguous prefix of a
   long option (``--specul`` is ``--speculative-config``; an ambiguous one is an error); a
   one-character short option with its value attached (``-qfp8``, ``-n2``) or a prefix of a
   longer one-dash option (``-s`` is ``-sc``); ``--`` ends the options. An item that is none
   of these is a value when it does not start with ``-``, is ``-`` alone, looks like a
   negative number without a ``.`` (``-1``; step 3 took the others) or holds a space;
   otherwise an unknown option.

``resolve`` mirrors this for one item; ``extra_args_problems`` judges a whole list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

#: The vLLM whose parser the table was read from: the default image's (the table's header
#: says the same, and ``aistack.components.VERSIONS["vllm"]`` must agree).
VLLM_VERSION = "0.34.0"

Kind = Literal["allowed", "operator", "refused"]
_KINDS: dict[str, Kind] = {"allowed": "allowed", "operator": "operator", "refused": "refused"}
_LOADS = {"yes": True, "no": False}
_COLUMNS = ["options", "kind", "loads", "note"]
_VERSION_LINE = re.compile(r"^# vllm: (\S+)")
#: argparse's test for a negative number (Python 3.11-3.13); such an item is a value.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
#: What the default vLLM does with ``-O`` (FlexibleArgumentParser.parse_args).
_OPTIMIZATION_LEVEL = "--optimization-level"
_NOT_CLASSIFIED = (
    f"is not a flag of vllm serve at vLLM {VLLM_VERSION} (the version of the default image); "
    "the operator refuses flags it cannot classify"
)


@dataclass(frozen=True)
class Flag:
    """One flag (argparse action) of ``vllm serve``: all its option strings and its row."""

    options: tuple[str, ...]
    kind: Kind
    #: The flag can name weights, code, files, URLs or repositories that vLLM would load.
    loads: bool
    #: operator: the spec field that sets it; refused: why.
    note: str

    @property
    def name(self) -> str:
        """The first long option string: how messages name the flag."""
        return next(o for o in self.options if o.startswith("--"))


Trouble = Literal["unknown", "ambiguous", "end", "mangled"]


class FlagError(ValueError):
    """An item vLLM would not read as a known flag or a plain value: an ``unknown`` option,
    an ``ambiguous`` abbreviation, the ``end`` of options (``--``), or an item vLLM's
    rewriting ``mangled``. The message says which and why (without the field)."""

    def __init__(self, trouble: Trouble, message: str) -> None:
        super().__init__(message)
        self.trouble: Trouble = trouble


def _row(line: str) -> Flag:
    cells = line.split("\t")
    if len(cells) != len(_COLUMNS) or cells[1] not in _KINDS or cells[2] not in _LOADS:
        raise ValueError(f"vllm-serve-flags.tsv: malformed row {line!r}")
    flag = Flag(tuple(cells[0].split(" ")), _KINDS[cells[1]], _LOADS[cells[2]], cells[3])
    if not any(o.startswith("--") for o in flag.options) or not all(
        o.startswith("-") for o in flag.options
    ):
        raise ValueError(f"vllm-serve-flags.tsv: a row needs long option strings: {line!r}")
    if flag.kind == "allowed" and (flag.loads or flag.note):
        raise ValueError(f"vllm-serve-flags.tsv: an allowed flag loads nothing: {line!r}")
    if flag.kind != "allowed" and not flag.note:
        raise ValueError(f"vllm-serve-flags.tsv: {flag.name} needs a note")
    return flag


@cache
def table() -> Mapping[str, Flag]:
    """Every option string of ``vllm serve`` (``-tp``, ``--no-enable-lora`` and the like
    included) and its flag."""
    text = resources.files("aistack").joinpath("data/vllm-serve-flags.tsv").read_text()
    lines = text.splitlines()
    versions = [m.group(1) for line in lines if (m := _VERSION_LINE.match(line))]
    if versions != [VLLM_VERSION]:
        raise ValueError(f"vllm-serve-flags.tsv is for vLLM {versions}, not {VLLM_VERSION}")
    rows = [line for line in lines if line and not line.startswith("#")]
    if rows[:1] != ["\t".join(_COLUMNS)]:
        raise ValueError("vllm-serve-flags.tsv: the header row is missing")
    out: dict[str, Flag] = {}
    for line in rows[1:]:
        flag = _row(line)
        for option in flag.options:
            if option in out or _NEGATIVE_NUMBER.match(option):
                # A negative-number-like option would change what argparse takes as a value.
                raise ValueError(f"vllm-serve-flags.tsv: option {option} cannot be listed")
            out[option] = flag
    return out


def _dashes(item: str) -> str:
    """Step 1: underscores to dashes in the name of a ``--`` item."""
    key, sep, value = item.partition("=")
    name, dot, rest = key[2:].partition(".")
    return f"--{name.replace('_', '-')}{dot}{rest}{sep}{value}"


def _dotted_key(item: str) -> str | None:
    """Step 3: the option a dotted JSON-key item stands for, or None if it is not one."""
    if not item.startswith("-"):
        return None
    head = item.partition("=")[0]
    if "." not in head:
        return None
    return head.removesuffix("+").partition(".")[0]


def _candidates(item: str) -> list[str]:
    """argparse's ``_get_option_tuples``: the option strings an abbreviation could be."""
    flags = table()
    if item[1] == "-":
        prefix = item.partition("=")[0]
        return [o for o in flags if o.startswith(prefix)]
    return [o for o in flags if o == item[:2] or o.startswith(item)]


def _lookup(item: str) -> Flag | None:
    """Step 5: argparse's ``_parse_optional`` on the ``serve`` parser."""
    flags = table()
    if not item.startswith("-") or item == "-":
        return None
    if item in flags:
        return flags[item]
    option, sep, _value = item.partition("=")
    if sep and option in flags:
        return flags[option]
    matches = _candidates(item)
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (
            f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        )
        raise FlagError(
            "ambiguous",
            f"{option} is ambiguous: vLLM's parser takes a prefix of a flag name as that "
            f"flag, and {option} begins {shown}; spell the flag out",
        )
    if matches:
        return flags[matches[0]]
    if _NEGATIVE_NUMBER.match(item) or " " in item:
        return None
    raise FlagError("unknown", f"{option} {_NOT_CLASSIFIED}")


def resolve(item: str) -> Flag | None:
    """The flag vLLM 0.34.0's ``vllm serve`` takes ``item`` (one argv item) as, or None for
    a value (see the module docstring for its rules). Raises :class:`FlagError` for an item
    it takes as no known flag and no plain value."""
    if item == "--":
        raise FlagError(
            "end",
            "-- ends vLLM's options: every item after it would be read as a positional "
            "argument (another model)",
        )
    if item.startswith("--"):
        item = _dashes(item)
    elif item.startswith("-O"):
        level = item[3:] if item.startswith("-O=") else item[2:]
        if level.startswith("-"):
            raise FlagError(
                "mangled",
                "vLLM splits an -O item into --optimization-level and the rest, and reads a "
                "rest that starts with '-' as a flag of its own; write the level alone (-O3)",
            )
        return table()[_OPTIMIZATION_LEVEL]
    key = _dotted_key(item)
    if key is None:
        return _lookup(item)
    if key == "--":
        raise FlagError(
            "end", f"vLLM turns {item.partition('=')[0]!r} into a lone --, which ends its options"
        )
    flag = _lookup(key)
    if flag is None:
        raise FlagError(
            "mangled",
            f"an item that starts with '-' and has a '.' is a dotted JSON key to vLLM "
            f"(here {key!r}, which its parser then reads as a value), and vLLM takes the next "
            "item as the key's value; attach a negative decimal to its flag (--flag=-0.5)",
        )
    return flag


def item_problem(item: str) -> str | None:
    """Why one item of extraArgs may not be passed (None: it may): a flag the operator sets
    or refuses, or an item it cannot classify."""
    try:
        flag = resolve(item)
    except FlagError as exc:
        return str(exc)
    if flag is None or flag.kind == "allowed":
        return None
    if flag.kind == "refused":
        return f"{flag.name} is refused in extraArgs: {flag.note}"
    if flag.note.startswith("spec."):
        return f"{flag.name} is set by the operator from {flag.note}; use that field instead"
    return f"{flag.name} is set by {flag.note}"


def extra_args_problems(args: Sequence[str], field: str) -> list[str]:
    """One message per item of the extraArgs list at ``field`` (e.g.
    ``spec.models[0].extraArgs``) that vLLM would read as a flag the operator sets or
    refuses, or that the operator cannot classify. Values pass, except a first item: it
    would follow the flags before the list, and be read as more values of a flag that takes
    several (the operator's ``--lora-modules`` last of all: another adapter)."""
    problems = []
    if starts_with_value(args):
        problems.append(f"{field}[0]: {FIRST_ITEM_IS_A_VALUE}")
    problems += [f"{field}[{i}]: {p}" for i, item in enumerate(args) if (p := item_problem(item))]
    return problems


FIRST_ITEM_IS_A_VALUE = (
    "the first item is a value, not a flag: vLLM would read it as one more value of the "
    "flag before the list (e.g. another adapter of the operator's --lora-modules) or as "
    "another model; extraArgs must start with a flag"
)


def starts_with_value(args: Sequence[str]) -> bool:
    """Whether an extraArgs list starts with a value rather than a flag."""
    return bool(args) and _is_value(args[0])


def _is_value(item: str) -> bool:
    try:
        return resolve(item) is None
    except FlagError:
        return False
