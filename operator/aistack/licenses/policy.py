"""LicensePolicy: compiled from its object, judging one resolved license, its status (the
Valid condition)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from importlib import resources
from typing import Any, get_args

import yaml
from license_expression import AND, OR, LicenseSymbol, LicenseWithExceptionSymbol
from pydantic import ValidationError

from aistack.api.v1alpha1 import LicensePolicy, is_storage
from aistack.conditions import as_dict, condition, previous_of
from aistack.errors import format_validation_error
from aistack.licenses.catalog import Licensed, Source, canonical_repo
from aistack.licenses.resolution import Resolution
from aistack.licenses.spdx import ExpressionProblem, parse
from aistack.verdicts import Enforcement, LicenseVerdict


@cache
def default_policy() -> LicensePolicy:
    text = resources.files("aistack").joinpath("data/default-licensepolicy.yaml").read_text()
    return LicensePolicy.model_validate(yaml.safe_load(text))


class Leaf(IntEnum):
    DENIED = 0
    NOT_ALLOWED = 1
    ALLOWED = 2


@dataclass(frozen=True)
class CompiledException:
    model: str
    namespace: str | None
    revision: str | None
    reason: str

    def covers(self, subject: Licensed, namespace: str | None) -> bool:
        """Whether it names this model: a Hugging Face repo by any spelling of it, a pvc://
        or s3:// source exactly (paths and keys are case-sensitive), in its namespace."""
        if self.namespace is not None and self.namespace != namespace:
            return False
        if self.revision is not None and self.revision != subject.revision:
            return False
        if is_storage(self.model) or is_storage(subject.source):
            return self.model == subject.source
        return canonical_repo(self.model) == canonical_repo(subject.source)


@dataclass(frozen=True)
class CompiledPolicy:
    name: str
    allow: frozenset[str]
    deny: frozenset[str]
    unknown: str
    enforcement: Enforcement
    exceptions: tuple[CompiledException, ...]
    #: Hosted providers the gateway may send prompts to, and never; where the providers
    #: that take an endpoint may send them.
    providers_allow: frozenset[str] = frozenset()
    providers_deny: frozenset[str] = frozenset()
    provider_hosts: tuple[str, ...] = ()
    #: What a license only the stack declares counts for (``UnverifiedLicenses``).
    unverified_hugging_face: str = "Deny"
    unverified_storage: str = "Trust"
    #: Images stacks may name (``ImagePolicy``).
    images_allow: tuple[str, ...] = ()
    images_require_digest: bool = False
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
        exceptions=tuple(
            CompiledException(e.model, e.namespace, e.revision, e.reason) for e in spec.exceptions
        ),
        providers_allow=frozenset(spec.providers.allow),
        providers_deny=frozenset(spec.providers.deny),
        provider_hosts=tuple(spec.providers.hosts),
        unverified_hugging_face=spec.unverified.hugging_face,
        unverified_storage=spec.unverified.storage,
        images_allow=tuple(spec.images.allow),
        images_require_digest=spec.images.require_digest,
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


#: Reasons of a verdict that permits, and is said at admission as a warning.
WARNING_REASONS = frozenset({"LicenseUnknown", "LicenseUnverified"})


def _unverified(
    what: str, lic: str, subject: Licensed, policy: CompiledPolicy
) -> PolicyVerdict | None:
    """What a declared license that nothing verified gets (``spec.unverified``), when it
    would be allowed: None when the policy trusts it."""
    storage = is_storage(subject.source)
    action = policy.unverified_storage if storage else policy.unverified_hugging_face
    if action == "Trust":
        return None
    field = "storage" if storage else "huggingFace"
    nothing = (
        "nothing but the stack says so"
        if storage
        else "neither the catalog nor the Hugging Face Hub confirmed it"
    )
    if action == "Warn":
        return PolicyVerdict(
            True, "LicenseUnverified", f"{what} is under {lic} as declared, which is allowed, "
            f"but {nothing}; policy {policy.name} warns (unverified.{field}: Warn)",
        )  # fmt: skip
    return PolicyVerdict(
        False, "LicenseUnverified", f"{what} declares {lic}, but {nothing}, and policy "
        f"{policy.name} does not permit licenses only a stack declares "
        f"(unverified.{field}: Deny): ask an admin for an exception, or pin a model the "
        "catalog or the Hub knows",
    )  # fmt: skip


def evaluate_one(
    model: Licensed, resolved: Resolution, policy: CompiledPolicy, namespace: str | None = None
) -> PolicyVerdict:
    what = model.source + (f"@{model.revision}" if model.revision else "")
    if policy.invalid is not None:
        return PolicyVerdict(
            False, "PolicyInvalid", f"{what} is denied: this operator cannot read "
            f"LicensePolicy {policy.name} ({policy.invalid}), and a policy it cannot read "
            "denies every model until it is fixed (or the operator upgraded to read it)",
        )  # fmt: skip
    for exc in policy.exceptions:
        if exc.covers(model, namespace):
            return PolicyVerdict(
                True, "PolicyException", f"{what} is permitted by an exception in policy "
                f"{policy.name}: {exc.reason}",
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
        if not resolved.verified and (unverified := _unverified(what, lic, model, policy)):
            return unverified
        via = f"via {deciding}; " if deciding != lic else ""
        return PolicyVerdict(
            True, "LicenseAllowed", f"{what} is under {lic} ({via}{resolved.evidence}), allowed"
        )
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


def combine(
    policies: Sequence[CompiledPolicy],
    verdict_of: Callable[[CompiledPolicy], PolicyVerdict],
    license: str | None,
    source: Source | None,
) -> LicenseVerdict:
    """One verdict from every policy's: a violation of any counts; it blocks when that
    policy enforces (``Deny``), else the route runs and the status says."""
    verdicts = [(p, verdict_of(p)) for p in policies]
    violations = [(p, v) for p, v in verdicts if not v.ok]
    if not violations:
        # A policy that warns (an unknown or unverified license it lets through) speaks.
        v = next((v for _, v in verdicts if v.reason in WARNING_REASONS), verdicts[0][1])
        return LicenseVerdict(True, False, v.reason, v.message, license, source)
    blocking = [(p, v) for p, v in violations if p.enforcement == "Deny"]
    if blocking:
        _, v = blocking[0]
        return LicenseVerdict(False, True, v.reason, v.message, license, source, enforcement="Deny")
    # The strictest mode among the violated policies speaks: Warn before DryRun, whatever
    # order the policies were listed in (a Warn gets an admission warning, a DryRun not).
    p, v = next(((p, v) for p, v in violations if p.enforcement == "Warn"), violations[0])
    mode = "Warn: deployed anyway" if p.enforcement == "Warn" else "DryRun: only reported"
    message = f"{v.message} ({mode})"
    return LicenseVerdict(True, True, v.reason, message, license, source, enforcement=p.enforcement)
