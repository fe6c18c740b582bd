"""Model licenses: resolve each model's license, evaluate it against the LicensePolicies.

Pure given its inputs (the catalog is package data; the Hub is asked through the client
passed in, see ``aistack.hub``). Resolution order, recorded as ``licenseSource``: the
catalog shipped in the package (Hugging Face repo ids), then the model card on the Hugging
Face Hub at the pinned revision (when the operator is allowed to ask it), then the license
declared in the spec (the only source for pvc:// and s3://, and the fallback for repos
nothing else knows). A declared license that contradicts the catalog denies the model
(``LicenseMismatch``). No answer never means permitted: an unresolved license is
``unknown``, and the policy's ``unknown`` setting decides.

Evaluation parses SPDX expressions with license-expression: ``OR`` is permitted when any
branch is, ``AND`` only when all are, ``X WITH exception`` is judged by ``X``; deny wins
over allow; allow lists are exhaustive (a license on neither list is not permitted).
Several policies all apply (the strictest wins); with none, the built-in default policy
(the same as ``data/default-licensepolicy.yaml``) applies.
"""

from __future__ import annotations

import contextlib
import csv
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Literal, get_args

import yaml
from license_expression import (
    AND,
    OR,
    ExpressionError,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
    get_license_index,
    load_licensing_from_license_index,
)
from pydantic import ValidationError

from aistack.api.v1alpha1 import (
    AdapterSpec,
    AdapterStatus,
    AIStack,
    LicensePolicy,
    ModelSpec,
    ModelStatus,
    ProviderSpec,
)
from aistack.conditions import as_dict, condition, previous_of
from aistack.errors import format_validation_error
from aistack.hub import CardLicense, HubClient, HubUnavailable

Source = Literal["Catalog", "Hub", "Declared"]
#: What has a license to check: a model, or a LoRA adapter (a derivative of its model).
Licensed = ModelSpec | AdapterSpec
Enforcement = Literal["Deny", "Warn", "DryRun"]


@dataclass(frozen=True)
class LicenseVerdict:
    """What the license check decided for one model (the status needs no more)."""

    permitted: bool
    violation: bool
    reason: str
    message: str
    license: str | None = None
    license_source: str | None = None
    #: Set when a lookup failed (the Hub did not answer): why, and what was kept. The
    #: verdict is then the last good one (or unknown, for a model never resolved), and
    #: the stack is looked at again soon.
    stale: str | None = None
    #: The enforcement mode of the policy whose violation ``message`` reports (``Deny``
    #: blocks the model, ``Warn`` and ``DryRun`` do not); None when no policy is violated.
    enforcement: Enforcement | None = None


@dataclass(frozen=True)
class CatalogEntry:
    repo_id: str
    hub_license: str
    license_name: str
    status: str
    source: str

    @property
    def spdx(self) -> str | None:
        return hub_to_spdx(self.hub_license, self.license_name)


@cache
def catalog() -> dict[str, CatalogEntry]:
    """The shipped catalog, keyed by lower-cased repo id."""
    text = resources.files("aistack").joinpath("data/model-licenses.tsv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    out = {}
    for row in csv.DictReader(lines, delimiter="\t"):
        entry = CatalogEntry(
            row["repo_id"], row["hub_license"], row["license_name"], row["status"], row["source"]
        )
        out[entry.repo_id.lower()] = entry
    return out


@cache
def default_policy() -> LicensePolicy:
    text = resources.files("aistack").joinpath("data/default-licensepolicy.yaml").read_text()
    return LicensePolicy.model_validate(yaml.safe_load(text))


# ---------------------------------------------------------------- SPDX


@cache
def _licensing() -> Any:
    """SPDX ids (and their deprecated spellings), and no ``LicenseRef-*`` aliases.

    license-expression's own SPDX table (``get_spdx_licensing``) comes from ScanCode, which
    maps some ``LicenseRef-*`` names to real licenses: ``LicenseRef-apache`` to Apache-2.0,
    ``LicenseRef-gpl`` to GPL-1.0-or-later. A custom model license (``other`` with
    ``license_name: apache``) must stay itself, so those aliases are left out. Building the
    table takes a second: once per process.
    """
    entries = [
        {
            "key": lic["spdx_license_key"],
            "aliases": [
                alias
                for alias in lic.get("other_spdx_license_keys", [])
                if not alias.lower().startswith("licenseref-")
            ],
            "is_deprecated": lic.get("is_deprecated", False),
            "is_exception": lic.get("is_exception", False),
        }
        for lic in get_license_index()
        if lic.get("spdx_license_key")
    ]
    return load_licensing_from_license_index(entries)


#: Hub ids that name a license family but no version; SPDX would map "gpl" to
#: GPL-1.0-or-later, which is not what a card saying "gpl" promises.
_FAMILY_IDS = frozenset({"gpl", "lgpl", "agpl", "bsd", "cc", "apache", "openrail", "openrail++"})


#: What a card's license id looks like; anything else (spaces, operators) is free text.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


def _license_ref(name: str) -> str | None:
    """``LicenseRef-<name>``, with what is not a letter, digit or dot turned into ``-``."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
    return f"LicenseRef-{slug}" if slug else None


@lru_cache(maxsize=4096)
def hub_to_spdx(hub_id: str, license_name: str = "") -> str | None:
    """A Hugging Face card's license id as an SPDX expression (None: unknown).

    Remembered per (id, name): a reconcile looks up the same few ids every time, and
    validating one with ``license_expression`` takes about half a millisecond.

    Card metadata is written by whoever owns the repo: it is never read as an expression.
    ``license_name: "x OR mit"`` is the custom license ``LicenseRef-x-OR-mit``, and a value
    that is no single id resolves to unknown. Several ids (a card listing licenses, joined
    with `` AND `` by ``card_license_of``) must all be acceptable.
    """
    hub_id = hub_id.strip()
    if " AND " in hub_id:
        parts = [hub_to_spdx(part) for part in hub_id.split(" AND ")]
        return None if None in parts else " AND ".join(str(p) for p in parts)
    if not hub_id or hub_id.lower() == "unknown":
        return None
    if hub_id.lower() == "other":
        return _license_ref(license_name)
    if not _HUB_ID.fullmatch(hub_id):
        return None
    if hub_id.lower() not in _FAMILY_IDS and not _licensing().validate(hub_id).errors:
        return str(_licensing().parse(hub_id))
    # Model-family licenses (llama3.1, gemma, bigscience-bloom-rail-1.0, ...) have no SPDX
    # id; family ids such as "gpl" or "cc" name no version, so they are no SPDX id either.
    return f"LicenseRef-{hub_id}"


class ExpressionProblem(ValueError):
    """An expression that does not parse, or names a license SPDX does not know."""


def parse(expression: str) -> Any:
    """Parse and validate; ``LicenseRef-*`` ids are accepted as custom licenses.

    Remembered per expression (a reconcile parses the same few dozen ids every time; the
    parsed expressions are never changed by their users). Refusals are not remembered.
    """
    return _parse(expression)


@lru_cache(maxsize=4096)
def _parse(expression: str) -> Any:
    try:
        parsed = _licensing().parse(expression)
    except ExpressionError as exc:
        raise ExpressionProblem(f"{expression!r} is not a valid SPDX expression: {exc}") from exc
    if parsed is None:
        raise ExpressionProblem("empty license expression")
    known = _licensing().known_symbols
    unknown = [
        s.key
        for s in _licensing().license_symbols(parsed, decompose=True)
        if s.key not in known and not s.key.startswith("LicenseRef-")
    ]
    if unknown:
        raise ExpressionProblem(
            f"{', '.join(unknown)} is not an SPDX license id (use LicenseRef-<name> for "
            f"custom licenses)"
        )
    return parsed


def normalize_id(license_id: str) -> str:
    parsed = parse(license_id)
    return str(parsed)


def same_license(a: str, b: str) -> bool:
    """Whether two expressions name the same licenses (case, order and deprecated ids
    aside): ``apache-2.0`` is ``Apache-2.0``, ``MIT OR Apache-2.0`` is ``Apache-2.0 OR MIT``."""
    try:
        return bool(_licensing().is_equivalent(a, b))
    except ExpressionError:
        return a == b


def card_spdx(card: CardLicense) -> str | None:
    """What a model card's license says, as an SPDX expression (None: unknown)."""
    return hub_to_spdx(card.hub_license, card.license_name)


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolution:
    license: str | None
    source: Source | None
    mismatch: str | None = None
    #: Why the license is unknown, when it is.
    unknown_because: str = "not in the catalog, none declared in spec.models[].license"
    #: A lookup failed: why, and (when ``license`` is set) that it is the last good answer.
    stale: str | None = None


def _checked(model: Licensed, spdx: str, source: Source, where: str) -> Resolution:
    if model.license is not None and not same_license(model.license, spdx):
        return Resolution(
            spdx,
            source,
            mismatch=f"{model.source} declares {model.license}, but its model card says "
            f"{spdx} ({where})",
        )
    return Resolution(spdx, source)


def resolve(
    model: Licensed,
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
) -> Resolution:
    """Catalog, then the hub (at the pinned revision), then the declared license.

    ``last``: the license the hub gave for this source and revision before (from the
    stack's status), kept when the hub does not answer now.
    """
    known = catalog() if known is None else known
    entry = None
    on_hub = not model.source.startswith(("pvc://", "s3://"))
    if on_hub:
        entry = known.get(model.source.lower())
    if entry is not None and entry.spdx is not None:
        return _checked(model, entry.spdx, "Catalog", entry.source)
    stale = None
    if on_hub and hub is not None:
        at = f"Hugging Face card at {model.revision}" if model.revision else "Hugging Face card"
        try:
            card = hub.card_license(model.source, model.revision)
        except HubUnavailable as exc:
            stale = exc.reason
            kept = card_spdx(exc.last) if exc.last is not None else last
            if kept is not None:
                found = _checked(model, kept, "Hub", f"{at}, as last read")
                return replace(found, stale=f"{stale}; kept its last answer, {kept}")
            card = None
        spdx = None if card is None else card_spdx(card)
        if spdx is not None:
            return _checked(model, spdx, "Hub", at)
    if model.license is not None:
        return Resolution(model.license, "Declared", stale=stale)
    if stale is not None:
        return Resolution(None, None, unknown_because=f"{stale}; retrying", stale=stale)
    if entry is not None:
        said = entry.hub_license + (f"/{entry.license_name}" if entry.license_name else "")
        return Resolution(
            None, None, unknown_because=f"its model card says {said!r}, which names no license"
        )
    return Resolution(None, None)


# ---------------------------------------------------------------- evaluation


class Leaf(IntEnum):
    DENIED = 0
    NOT_ALLOWED = 1
    ALLOWED = 2


@dataclass(frozen=True)
class CompiledPolicy:
    name: str
    allow: frozenset[str]
    deny: frozenset[str]
    unknown: str
    enforcement: Enforcement
    exceptions: tuple[tuple[str, str | None, str], ...]
    #: Hosted providers the gateway may send prompts to, and never.
    providers_allow: frozenset[str] = frozenset()
    providers_deny: frozenset[str] = frozenset()
    #: Why this operator cannot read the policy (a field it does not know, a deny entry
    #: that does not parse). Such a policy denies every model: it fails closed.
    invalid: str | None = None


def compile_policy(policy: LicensePolicy) -> tuple[CompiledPolicy, list[str]]:
    """The policy with its ids normalized, and the problems found in it.

    An allow entry that does not parse allows nothing (allow lists are exhaustive, so
    leaving it out is the strict reading). A deny entry that does not parse could have
    meant any license: the policy cannot be read and denies every model (``invalid``).
    """
    problems: list[str] = []
    deny_problems: list[str] = []

    def ids(values: Iterable[str], field: str, found: list[str]) -> frozenset[str]:
        out = set()
        for value in values:
            try:
                parsed = parse(value)
            except ExpressionProblem as exc:
                found.append(f"spec.{field}: {exc}")
                continue
            if not isinstance(parsed, LicenseSymbol):
                # Leaves are compared one license at a time, "X WITH exception" as X: an
                # expression here would never match anything.
                found.append(
                    f"spec.{field}: {value!r} is an expression; list single license ids "
                    f"('X WITH exception' is judged as X)"
                )
                continue
            out.add(str(parsed))
        return frozenset(out)

    spec = policy.spec
    compiled = CompiledPolicy(
        name=policy.metadata.name,
        allow=ids(spec.allow, "allow", problems),
        deny=ids(spec.deny, "deny", deny_problems),
        unknown=spec.unknown,
        enforcement=spec.enforcement,
        exceptions=tuple((e.model.lower(), e.revision, e.reason) for e in spec.exceptions),
        providers_allow=frozenset(spec.providers.allow),
        providers_deny=frozenset(spec.providers.deny),
        invalid="; ".join(deny_problems) or None,
    )
    return compiled, problems + deny_problems


#: Enforcement modes; an unreadable policy keeps its mode when that much can be read.
_MODES: tuple[Enforcement, ...] = get_args(Enforcement)


def unreadable_policy(body: Mapping[str, Any], err: ValidationError) -> CompiledPolicy:
    """A policy this operator cannot read (e.g. written for a newer CRD with a field it
    does not know): it denies every model, in its own enforcement mode when that is
    readable (a DryRun policy never blocked anything), else ``Deny``."""
    name = str((body.get("metadata") or {}).get("name") or "<unnamed>")
    spec = body.get("spec")
    mode = spec.get("enforcement") if isinstance(spec, Mapping) else None
    return CompiledPolicy(
        name=name,
        allow=frozenset(),
        deny=frozenset(),
        unknown="Deny",
        enforcement=mode if mode in _MODES else "Deny",
        exceptions=(),
        invalid="; ".join(line.removeprefix(": ") for line in format_validation_error("", err)),
    )


def _leaf(symbol: Any, policy: CompiledPolicy) -> tuple[Leaf, str]:
    if isinstance(symbol, LicenseWithExceptionSymbol):
        symbol = symbol.license_symbol
    key = str(symbol.key)
    if key in policy.deny:
        return Leaf.DENIED, key
    if key in policy.allow:
        return Leaf.ALLOWED, key
    return Leaf.NOT_ALLOWED, key


def judge(parsed: Any, policy: CompiledPolicy) -> tuple[Leaf, str]:
    """The verdict on an expression tree and the license that decided it."""
    if isinstance(parsed, LicenseSymbol | LicenseWithExceptionSymbol):
        return _leaf(parsed, policy)
    results = [judge(arg, policy) for arg in parsed.args]
    if isinstance(parsed, OR):
        return max(results, key=lambda r: r[0])
    if isinstance(parsed, AND):
        return min(results, key=lambda r: r[0])
    raise ExpressionProblem(f"unsupported expression {parsed}")


@dataclass(frozen=True)
class PolicyVerdict:
    ok: bool
    reason: str
    message: str


def evaluate_one(model: Licensed, resolved: Resolution, policy: CompiledPolicy) -> PolicyVerdict:
    what = model.source + (f"@{model.revision}" if model.revision else "")
    if policy.invalid is not None:
        return PolicyVerdict(
            False, "PolicyInvalid", f"{what} is denied: this operator cannot read "
            f"LicensePolicy {policy.name} ({policy.invalid}), and a policy it cannot read "
            "denies every model until it is fixed (or the operator upgraded to read it)",
        )  # fmt: skip
    for exc_model, exc_revision, exc_reason in policy.exceptions:
        if exc_model == model.source.lower() and exc_revision in (None, model.revision):
            return PolicyVerdict(
                True, "PolicyException", f"{what} is permitted by an exception in policy "
                f"{policy.name}: {exc_reason}",
            )  # fmt: skip
    if resolved.mismatch:
        return PolicyVerdict(False, "LicenseMismatch", resolved.mismatch)
    if resolved.license is None:
        ok = policy.unknown == "Warn"
        return PolicyVerdict(
            ok, "LicenseUnknown", f"the license of {what} is unknown "
            f"({resolved.unknown_because}); policy {policy.name} "
            f"{'warns about' if ok else 'denies'} unknown licenses",
        )  # fmt: skip
    try:
        parsed = parse(resolved.license)
    except ExpressionProblem as exc:
        return PolicyVerdict(False, "LicenseInvalid", f"{what}: {exc}")
    verdict, deciding = judge(parsed, policy)
    lic = str(parsed)
    if verdict is Leaf.ALLOWED:
        via = f" (via {deciding})" if deciding != lic else ""
        return PolicyVerdict(True, "LicenseAllowed", f"{what} is under {lic}{via}, allowed")
    if verdict is Leaf.DENIED:
        return PolicyVerdict(
            False, "LicenseDenied", f"{what} is under {lic}, which policy {policy.name} denies"
        )
    return PolicyVerdict(
        False, "LicenseNotAllowed",
        f"{what} is under {lic}, which policy {policy.name} does not allow",
    )  # fmt: skip


def policies_from(raw: Sequence[Mapping[str, Any]]) -> list[CompiledPolicy]:
    """The cluster's policies; none -> the built-in default. A policy that does not
    validate still counts, and fails closed (``unreadable_policy``); one whose allow list
    has entries that do not parse applies without them (they are reported on it)."""
    out = []
    for body in raw:
        try:
            policy = LicensePolicy.model_validate(body)
        except ValidationError as err:
            out.append(unreadable_policy(body, err))
            continue
        out.append(compile_policy(policy)[0])
    if not out:
        out.append(compile_policy(default_policy())[0])
    return out


def decide(
    model: Licensed,
    policies: Sequence[CompiledPolicy],
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
) -> LicenseVerdict:
    """One model against every policy: a violation of any policy counts; it blocks the
    model when that policy enforces (``Deny``), else the model runs and the status says.
    ``last``: the license the hub gave before (see ``resolve``)."""
    resolved = resolve(model, known, hub, last)
    verdict = _decide(model, resolved, policies)
    return replace(verdict, stale=resolved.stale) if resolved.stale else verdict


def _decide(
    model: Licensed, resolved: Resolution, policies: Sequence[CompiledPolicy]
) -> LicenseVerdict:
    return _combine(
        policies, lambda p: evaluate_one(model, resolved, p), resolved.license, resolved.source
    )


def evaluate_provider(provider: ProviderSpec, policy: CompiledPolicy) -> PolicyVerdict:
    """Whether one policy lets the gateway send prompts to the route's provider."""
    what = f"route {provider.name} sends prompts to provider {provider.provider} ({provider.model})"
    if policy.invalid is not None:
        return PolicyVerdict(
            False, "PolicyInvalid", f"{what}, denied: this operator cannot read LicensePolicy "
            f"{policy.name} ({policy.invalid})",
        )  # fmt: skip
    if provider.provider in policy.providers_deny:
        return PolicyVerdict(False, "ProviderDenied", f"{what}, which policy {policy.name} denies")
    if provider.provider not in policy.providers_allow:
        return PolicyVerdict(
            False, "ProviderNotAllowed", f"{what}, which policy {policy.name} does not allow "
            "(prompts leave the cluster only for providers a LicensePolicy's "
            "providers.allow lists)",
        )  # fmt: skip
    return PolicyVerdict(True, "ProviderAllowed", f"{what}, allowed")


def decide_provider(provider: ProviderSpec, policies: Sequence[CompiledPolicy]) -> LicenseVerdict:
    """A hosted provider route against every policy, as a model's license is judged."""
    return _combine(policies, lambda p: evaluate_provider(provider, p), None, None)


def _combine(
    policies: Sequence[CompiledPolicy],
    verdict_of: Callable[[CompiledPolicy], PolicyVerdict],
    license: str | None,
    source: Source | None,
) -> LicenseVerdict:
    """One verdict from every policy's: a violation of any counts; it blocks when that
    policy enforces (``Deny``), else the route runs and the status says."""
    resolved = Resolution(license, source)
    verdicts = [(p, verdict_of(p)) for p in policies]
    violations = [(p, v) for p, v in verdicts if not v.ok]
    if not violations:
        v = verdicts[0][1]
        return LicenseVerdict(True, False, v.reason, v.message, resolved.license, resolved.source)
    blocking = [(p, v) for p, v in violations if p.enforcement == "Deny"]
    if blocking:
        _, v = blocking[0]
        return LicenseVerdict(
            False, True, v.reason, v.message, resolved.license, resolved.source, enforcement="Deny"
        )
    # The strictest mode among the violated policies speaks: Warn before DryRun, whatever
    # order the policies were listed in (a Warn gets an admission warning, a DryRun not).
    p, v = next(((p, v) for p, v in violations if p.enforcement == "Warn"), violations[0])
    mode = "Warn: deployed anyway" if p.enforcement == "Warn" else "DryRun: only reported"
    message = f"{v.message} ({mode})"
    return LicenseVerdict(
        True, True, v.reason, message, resolved.license, resolved.source, enforcement=p.enforcement
    )


#: license-expression builds its SPDX tables lazily and not thread-safely: stacks
#: reconciled in parallel right after start-up saw "mit" as an unknown id. One evaluation
#: at a time (each takes well under a millisecond once warm).
_LOCK = threading.Lock()


def decide_adapter(
    model: ModelSpec,
    adapter: AdapterSpec,
    base: LicenseVerdict,
    policies: Sequence[CompiledPolicy],
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
) -> LicenseVerdict:
    """An adapter against every policy, on top of its base model's verdict: an adapter is
    a derivative of its model, so it is served only under its own license AND its
    model's. Its own license is resolved and judged like a model's (an exception may
    name its source); when the model is not permitted, neither is the adapter."""
    verdict = decide(adapter, policies, known, hub, last)
    prefix = f"adapter {adapter.name} of model {model.name}: "
    if base.permitted:
        return replace(verdict, message=prefix + verdict.message)
    why = f"its base model is not permitted ({base.message})"
    if verdict.permitted:
        message = f"{prefix}not served, because {why}"
    else:
        message = f"{prefix}{verdict.message}; and {why}"
    return replace(
        verdict,
        permitted=False,
        reason=verdict.reason if not verdict.permitted else "BaseModelBlocked",
        message=message,
        enforcement=verdict.enforcement or base.enforcement,
    )


def decide_models(
    models: Sequence[ModelSpec],
    policies: Sequence[CompiledPolicy],
    hub: HubClient | None = None,
    last: Mapping[str, str] | None = None,
) -> dict[str, LicenseVerdict]:
    """Every model and every adapter of ``models``, by name (adapter names are unique
    across the stack's models and adapters). ``last``: by name, the license the hub gave
    before (see ``resolve``)."""
    last = last or {}
    out: dict[str, LicenseVerdict] = {}
    for m in models:
        base = out[m.name] = decide(m, policies, hub=hub, last=last.get(m.name))
        for a in m.adapters:
            out[a.name] = decide_adapter(m, a, base, policies, hub=hub, last=last.get(a.name))
    return out


def decide_routes(
    stack: AIStack,
    policies: Sequence[CompiledPolicy],
    hub: HubClient | None = None,
    last: Mapping[str, str] | None = None,
) -> dict[str, LicenseVerdict]:
    """Every route of the stack by name (names are unique across them): its models, their
    adapters and its hosted providers (when it has a gateway to send them prompts)."""
    out = decide_models(stack.spec.models, policies, hub=hub, last=last)
    for p in stack.spec.gateway.providers if stack.spec.gateway.enabled else []:
        out[p.name] = decide_provider(p, policies)
    return out


def last_hub_licenses(stack: AIStack) -> dict[str, str]:
    """Per model and adapter, the license the hub gave for its current source and
    revision, as the stack's status recorded it: kept when the hub does not answer (an
    operator restarted during an outage of the hub does not stop the models that run)."""
    if stack.status is None:
        return {}
    specs: dict[str, Licensed] = {}
    for m in stack.spec.models:
        specs[m.name] = m
        specs |= {a.name: a for a in m.adapters}
    seen: list[tuple[str, ModelStatus | AdapterStatus]] = [(s.name, s) for s in stack.status.models]
    seen += [(a.name, a) for s in stack.status.models for a in s.adapters or []]
    out = {}
    for name, status in seen:
        spec = specs.get(name)
        if (
            spec is not None
            and status.license_source == "Hub"
            and status.license
            and status.source == spec.source
            and status.revision == spec.revision
        ):
            out[name] = status.license
    return out


def decide_stack(
    stack: AIStack, policies: Sequence[Mapping[str, Any]], hub: HubClient | None = None
) -> dict[str, LicenseVerdict]:
    """Every model, adapter and hosted provider of the stack against the cluster's policies
    (raw objects), by name; what the reconciler asks, with the operator's hub bound
    (``aistack run --hub``)."""
    # Hub answers are fetched first, outside the lock: they may take a network timeout.
    if hub is not None:
        licensed: list[Licensed] = []
        for m in stack.spec.models:
            licensed += [m, *m.adapters]
        for x in licensed:
            if x.source.lower() not in catalog() and not x.source.startswith(("pvc://", "s3://")):
                with contextlib.suppress(HubUnavailable):
                    hub.card_license(x.source, x.revision)
    last = last_hub_licenses(stack) if hub is not None else {}
    with _LOCK:
        return decide_routes(stack, policies_from(policies), hub=hub, last=last)


def admission_messages(
    stack: AIStack, policies: Sequence[Mapping[str, Any]], hub: HubClient | None = None
) -> tuple[list[str], list[str]]:
    """What the webhook says of a stack: the messages that refuse it (models a ``Deny``
    policy blocks) and its admission warnings (violations of a ``Warn`` policy, and unknown
    licenses a policy with ``unknown: Warn`` lets through; violations of a ``DryRun``
    policy are only reported in the stack's status)."""
    verdicts = decide_stack(stack, policies, hub).values()
    denied = [v.message for v in verdicts if not v.permitted]
    warned = [
        v.message
        for v in verdicts
        if v.permitted and (v.enforcement == "Warn" or v.reason == "LicenseUnknown")
    ]
    return denied, warned


def policy_status(
    body: Mapping[str, Any], previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """A LicensePolicy's status: a ``Valid`` condition naming what does not parse. Allow
    entries that do not parse are ignored (the rest applies); a policy that does not
    validate, or whose deny list does not parse, denies every model (``PolicyInvalid``)."""
    generation = body.get("metadata", {}).get("generation")
    try:
        compiled, problems = compile_policy(LicensePolicy.model_validate(body))
        invalid = compiled.invalid
    except ValidationError as err:
        invalid = unreadable_policy(body, err).invalid
        problems = [invalid or "invalid"]
    if invalid is not None:
        reason = "PolicyInvalid"
        message = (
            f"this operator cannot read the policy ({'; '.join(problems)}); it denies every "
            "model until it is fixed"
        )
    elif problems:
        reason = "InvalidLicenseIds"
        message = "; ".join(problems) + " (ignored: these entries allow nothing)"
    else:
        reason, message = "Valid", "every listed license parses"
    old = previous_of((previous or {}).get("conditions"))
    valid = condition(
        "Valid", not problems, reason, message, generation=generation, previous=old, now=now
    )
    return {"observedGeneration": generation, "conditions": [as_dict(valid)]}
