"""Kubernetes-style conditions, built in one place.

Every condition the operator writes (a stack's, a LicensePolicy's) comes from ``condition``:
it carries the generation it was computed for, and its ``lastTransitionTime`` moves only
when its status really changes. Pure: the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from aistack.api.v1alpha1 import Condition

Status = Literal["True", "False", "Unknown"]


def previous_of(conditions: Iterable[Condition | Mapping[str, Any]] | None) -> dict[str, Condition]:
    """Conditions by type, from a parsed status or the raw list the API server stores.
    Entries that do not parse (written by someone else) are left out."""
    out: dict[str, Condition] = {}
    for c in conditions or []:
        if isinstance(c, Condition):
            out[c.type] = c
            continue
        try:
            parsed = Condition.model_validate(c)
        except ValueError:
            continue
        out[parsed.type] = parsed
    return out


def condition(
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    previous: Mapping[str, Condition],
    now: str,
) -> Condition:
    """A condition of ``ctype``: status True when ``ok``; its transition time is the
    previous one while the status stays the same, else ``now``."""
    status: Status = "True" if ok else "False"
    before = previous.get(ctype)
    since = before.last_transition_time if before and before.status == status else now
    return Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def as_dict(cond: Condition) -> dict[str, Any]:
    """A condition as the API server stores it (camelCase, no nulls)."""
    return cond.model_dump(by_alias=True, exclude_none=True)
