"""How validation errors read: one line per problem, with the field path."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(where: str, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        # Model validators report at the object they validate; their message names fields.
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        msg = e["msg"].removeprefix("Value error, ")
        got = ""
        if e["type"] not in ("missing", "value_error") and not isinstance(e["input"], dict):
            shown = repr(e["input"])
            if len(shown) > 80:  # a hostile or runaway value: enough to recognise it
                shown = f"{shown[:60]}... ({len(shown)} characters)"
            got = f" (got {shown})"
        lines.append(f"{where}: {_loc(loc)}: {msg}{got}")
    return lines
