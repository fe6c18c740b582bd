"""The pure half of the benchmark: percentiles, API request counts from an audit log,
ratios and the printed table. No cluster, no clock: unit-tested in tests/test_bench.py.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aistack.kinds import CHILD_KINDS

#: User agents of the operator's two clients: our REST layer and kopf's watches/patches.
OPERATOR_AGENTS = ("aistack-operator/", "kopf/")
KUBECTL_AGENT = "kubectl/"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def parse_time(stamp: str) -> float:
    """An audit timestamp (RFC 3339 with microseconds) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Request:
    """One API request from the audit log (stage ResponseComplete)."""

    at: float
    agent: str
    verb: str
    resource: str  # plural, with "/subresource" when there is one
    namespace: str
    name: str
    code: int

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS


def read_audit(lines: Iterable[str], agents: Sequence[str]) -> list[Request]:
    """Completed requests whose user agent starts with one of ``agents``.

    Lines that cannot belong to those agents are skipped before they are parsed (an audit
    log of a thousand stacks holds hundreds of thousands of events of other clients).
    """
    needles = [f'"userAgent":"{a}' for a in agents]
    out: list[Request] = []
    for line in lines:
        if not any(n in line for n in needles):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut off by a log rotation or a kill
        if event.get("stage") != "ResponseComplete":
            continue
        ref = event.get("objectRef") or {}
        resource = str(ref.get("resource", ""))
        if ref.get("subresource"):
            resource += "/" + str(ref["subresource"])
        out.append(
            Request(
                at=parse_time(event["requestReceivedTimestamp"]),
                agent=str(event.get("userAgent", "")),
                verb=str(event.get("verb", "")),
                resource=resource,
                namespace=str(ref.get("namespace", "")),
                name=str(ref.get("name", "")),
                code=int((event.get("responseStatus") or {}).get("code", 0)),
            )
        )
    return out


def window(requests: Iterable[Request], start: float, end: float) -> list[Request]:
    return [r for r in requests if start <= r.at <= end]


def by_verb(requests: Iterable[Request]) -> dict[str, int]:
    return dict(sorted(Counter(r.verb for r in requests).items()))


def by_resource_verb(requests: Iterable[Request]) -> dict[str, int]:
    return dict(sorted(Counter(f"{r.verb} {r.resource}" for r in requests).items()))


@dataclass(frozen=True)
class WriteBreakdown:
    """The writes of a creation run, sorted into what the goals are stated in."""

    child_writes: int  # create/patch/update of the stacks' children
    children: int  # how many children exist at the end
    status_writes: int  # patches of aistacks/status
    event_writes: int  # Events posted
    other_writes: int  # anything else (should be nothing)
    repeat_child_writes: dict[str, int] = field(default_factory=dict)  # object -> writes > 1

    @property
    def writes_per_child(self) -> float:
        return self.child_writes / self.children if self.children else 0.0


CHILD_RESOURCES = frozenset(k.plural for k in CHILD_KINDS)


def write_breakdown(requests: Iterable[Request], children: int) -> WriteBreakdown:
    per_object: Counter[str] = Counter()
    status = events = other = 0
    for r in requests:
        if not r.write:
            continue
        if r.resource in CHILD_RESOURCES:
            per_object[f"{r.resource}/{r.namespace}/{r.name}"] += 1
        elif r.resource == "aistacks/status":
            status += 1
        elif r.resource == "events":
            events += 1
        else:
            other += 1
    return WriteBreakdown(
        child_writes=sum(per_object.values()),
        children=children,
        status_writes=status,
        event_writes=events,
        other_writes=other,
        repeat_child_writes={k: v for k, v in sorted(per_object.items()) if v > 1},
    )


def ratio(operator: float | None, limit: float | None) -> float | None:
    if operator is None or limit is None or limit <= 0:
        return None
    return operator / limit


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value:.2f}{unit}" if unit else f"{value:.2f}"


HEAD = ("measurement", "operator", "limit", "ratio", "goal", "met")


def _cells(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    lines: list[tuple[str, ...]] = []
    for row in rows:
        r = ratio(row.get("operator"), row.get("limit"))
        goal = row.get("goal")
        met = row.get("met")
        lines.append(
            (
                str(row["name"]),
                _fmt(row.get("operator"), row.get("unit", "s")),
                _fmt(row.get("limit"), row.get("unit", "s")),
                "-" if r is None else f"{r:.2f}x",
                "-" if goal is None else str(goal),
                "-" if met is None else ("yes" if met else "NO"),
            )
        )
    return lines


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of result rows (one per measurement), ratios included."""
    head = HEAD
    lines = [head, *_cells(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The same table in Markdown (docs/benchmarks.md is made from it)."""
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(line) + " |" for line in _cells(rows)]
    return "\n".join(out)
