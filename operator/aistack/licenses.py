"""Model licenses: resolve each model's license, evaluate it against the LicensePolicies.

Pure given its inputs (the catalog is package data; the Hub is asked through the client
passed in, see ``aistack.hub``; a Secret's labels through the lookup passed in). Names
resolve to models, not spellings: a Hugging Face repo id is matched case-insensitively and
through the Hub's renames (``data/model-aliases.tsv``, and the id the Hub answers under).
Resolution order, recorded as ``licenseSource``: the catalog shipped in the package, then
the model card on the Hugging Face Hub at the pinned revision (when the operator is allowed
to ask it), then the license declared in the spec (the only source for pvc:// and s3://).
A declared license that contradicts the catalog or the card denies the model
(``LicenseMismatch``); one that nothing verified counts for what the policy's
``unverified`` says. No answer never means permitted: an unresolved license is
``unknown``, and the policy's ``unknown`` setting decides.

Evaluation parses SPDX expressions with license-expression: ``OR`` is permitted when any
branch is, ``AND`` only when all are, ``X WITH exception`` is judged by ``X`` (the
exception must be an SPDX license exception); deny wins over allow; allow lists are
exhaustive (a license on neither list is not permitted). Several policies all apply (the
strictest wins); with none, the built-in default policy (the same as
``data/default-licensepolicy.yaml``) applies. Hosted providers are judged by the host
prompts go to, container images by their repository.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Literal, Protocol, get_args

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
    ENDPOINT_PROVIDERS,
    PROVIDER_HOSTS,
    AdapterStatus,
    AIStack,
    DraftStatus,
    LicensePolicy,
    ModelSpec,
    ModelStatus,
    ProviderSpec,
    is_storage,
    normalize_host,
)
from aistack.conditions import as_dict, condition, previous_of
from aistack.errors import format_validation_error
from aistack.hub import CardLicense, HubClient, HubUnavailable
from aistack.images import covered, parse_image
from aistack.names import PROVIDER_CREDENTIALS_LABEL, image_key, speculative_key
from aistack.verdicts import Enforcement, LicenseVerdict

Source = Literal["Catalog", "Hub", "Declared"]


class Licensed(Protocol):
    """What has a license to check: a model, or what runs on top of it (a LoRA adapter, a
    draft model for speculative decoding): derivatives of the model."""

    @property
    def source(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def license(self) -> str | None: ...


@dataclass(frozen=True)
class Draft:
    """A model's draft for speculative decoding, as a license check sees it."""

    source: str
    revision: str | None = None
    license: str | None = None


def draft_of(model: ModelSpec) -> Draft | None:
    """The weights of a model's speculative decoding (None: none of its own)."""
    spec = model.speculative
    if spec is None or spec.source is None:
        return None
    return Draft(spec.source, spec.revision, spec.license)


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


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("aistack").joinpath(f"data/{name}").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


@cache
def _renames() -> tuple[dict[str, str], dict[str, str]]:
    """The Hub's renames (``data/model-aliases.tsv``), lower case: repos, organisations."""
    repos: dict[str, str] = {}
    orgs: dict[str, str] = {}
    for row in _rows("model-aliases.tsv"):
        old, new = row["from"].lower(), row["to"].lower()
        (orgs if old.endswith("/") else repos)[old] = new
    return repos, orgs


def canonical_repo(repo_id: str) -> str:
    """The Hugging Face repo a spelling names: lower case (the Hub's ids are
    case-insensitive), under the name the Hub serves it under now (renamed repos and
    organisations redirect to their new names)."""
    repos, orgs = _renames()
    key = repo_id.lower()
    for _ in range(4):  # a renamed organisation's repo may itself have been renamed
        org, slash, rest = key.partition("/")
        moved = repos.get(key) or (orgs[org + "/"] + rest if slash and org + "/" in orgs else key)
        if moved == key:
            break
        key = moved
    return key


@cache
def catalog() -> dict[str, CatalogEntry]:
    """The shipped catalog, keyed by canonical repo id (``canonical_repo``)."""
    out = {}
    for row in _rows("model-licenses.tsv"):
        entry = CatalogEntry(
            row["repo_id"], row["hub_license"], row["license_name"], row["status"], row["source"]
        )
        out[canonical_repo(entry.repo_id)] = entry
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
        # strict: after WITH only a license exception (``Apache-2.0 WITH CC-BY-NC-4.0`` is no
        # Apache-2.0 with an extra permission), and an exception never alone.
        parsed = _licensing().parse(expression, strict=True)
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
    #: What verified the license, for messages: the catalog entry, the card at a revision.
    evidence: str = ""

    @property
    def verified(self) -> bool:
        """Whether something other than the stack's own declaration says so."""
        return self.source in ("Catalog", "Hub")


def _checked(model: Licensed, spdx: str, source: Source, where: str, evidence: str) -> Resolution:
    """A verified license, and whether the stack's declaration contradicts it. ``where``:
    the record, for a mismatch; ``evidence``: what verified it, in a few words."""
    if model.license is not None and not same_license(model.license, spdx):
        return Resolution(
            spdx,
            source,
            mismatch=f"{model.source} declares {model.license}, but its model card says "
            f"{spdx} ({where})",
            evidence=evidence,
        )
    return Resolution(spdx, source, evidence=evidence)


def _from_catalog(model: Licensed, entry: CatalogEntry, spdx: str) -> Resolution:
    same = entry.repo_id.lower() == model.source.lower()
    named = "" if same else f" as {entry.repo_id}"
    return _checked(
        model, spdx, "Catalog", f"catalog{named}: {entry.source}", f"verified by the catalog{named}"
    )


def resolve(
    model: Licensed,
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
) -> Resolution:
    """Catalog, then the hub (at the pinned revision), then the declared license.

    Repo ids are looked up under their canonical name (``canonical_repo``); a repo the Hub
    answers for under another name is looked up in the catalog under that one too.
    ``last``: the license the hub gave for this source and revision before (from the
    stack's status), kept when the hub does not answer now.
    """
    known = catalog() if known is None else known
    entry = None
    on_hub = not is_storage(model.source)
    if on_hub:
        entry = known.get(canonical_repo(model.source))
    if entry is not None and entry.spdx is not None:
        return _from_catalog(model, entry, entry.spdx)
    stale = None
    if on_hub and hub is not None:
        at = f"Hugging Face card at {model.revision}" if model.revision else "Hugging Face card"
        try:
            card = hub.card_license(model.source, model.revision)
        except HubUnavailable as exc:
            stale = exc.reason
            kept = card_spdx(exc.last) if exc.last is not None else last
            if kept is not None:
                found = _checked(model, kept, "Hub", f"{at}, as last read", f"{at}, as last read")
                return replace(found, stale=f"{stale}; kept its last answer, {kept}")
            card = None
        renamed = known.get(canonical_repo(card.repo_id)) if card and card.repo_id else None
        if renamed is not None and renamed.spdx is not None:
            return _from_catalog(model, renamed, renamed.spdx)
        spdx = None if card is None else card_spdx(card)
        if spdx is not None:
            return _checked(model, spdx, "Hub", at, f"verified on its {at}")
    if model.license is not None:
        return Resolution(
            model.license, "Declared", stale=stale, evidence="declared in the stack, not verified"
        )
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


def decide(
    model: Licensed,
    policies: Sequence[CompiledPolicy],
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
    *,
    namespace: str | None = None,
) -> LicenseVerdict:
    """One model against every policy: a violation of any policy counts; it blocks the
    model when that policy enforces (``Deny``), else the model runs and the status says.
    ``last``: the license the hub gave before (see ``resolve``); ``namespace``: the stack's
    (exceptions may be limited to one)."""
    resolved = resolve(model, known, hub, last)
    verdict = _combine(
        policies,
        lambda p: evaluate_one(model, resolved, p, namespace),
        resolved.license,
        resolved.source,
    )
    return replace(verdict, stale=resolved.stale) if resolved.stale else verdict


# ---------------------------------------------------------------- hosted providers


def host_matches(pattern: str, host: str) -> bool:
    """``providers.hosts`` matching: an exact name, or ``*.`` and a suffix (any name below
    the suffix, not the suffix itself). Names compare as DNS does: case-insensitively,
    with or without the trailing dot."""
    host = normalize_host(host)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _owner_of(host: str) -> str | None:
    """The provider whose own endpoint ``host`` is (None: no provider's)."""
    for provider, own in PROVIDER_HOSTS.items():
        if "{region}" in own:
            head, tail = own.split("{region}")
            if host.startswith(head) and host.endswith(tail):
                return provider
        elif host == own:
            return provider
    return None


def evaluate_provider(provider: ProviderSpec, policy: CompiledPolicy) -> PolicyVerdict:
    """Whether one policy lets the gateway send prompts to the route's destination: the
    provider by name, and where it sends them by host."""
    host = provider.host
    what = (
        f"route {provider.name} sends prompts to provider {provider.provider} "
        f"({provider.model}) at {host}"
    )
    if policy.invalid is not None:
        return PolicyVerdict(
            False, "PolicyInvalid", f"{what}, denied: this operator cannot read LicensePolicy "
            f"{policy.name} ({policy.invalid})",
        )  # fmt: skip
    if provider.provider in policy.providers_deny:
        return PolicyVerdict(False, "ProviderDenied", f"{what}, which policy {policy.name} denies")
    owner = _owner_of(host)
    if owner is not None and owner != provider.provider and owner in policy.providers_deny:
        return PolicyVerdict(
            False, "ProviderDenied", f"{what}, which is provider {owner}'s own endpoint, and "
            f"policy {policy.name} denies {owner}",
        )  # fmt: skip
    if provider.provider not in policy.providers_allow:
        return PolicyVerdict(
            False, "ProviderNotAllowed", f"{what}, which policy {policy.name} does not allow "
            "(prompts leave the cluster only for providers a LicensePolicy's "
            "providers.allow lists)",
        )  # fmt: skip
    if provider.provider in ENDPOINT_PROVIDERS and not any(
        host_matches(pattern, host) for pattern in policy.provider_hosts
    ):
        return PolicyVerdict(
            False, "ProviderHostNotAllowed", f"{what}, a host policy {policy.name} does not "
            f"allow (providers.hosts lists where {', '.join(ENDPOINT_PROVIDERS)} may send "
            "prompts)",
        )  # fmt: skip
    return PolicyVerdict(True, "ProviderAllowed", f"{what}, allowed")


#: A Secret's labels, by name, in the stack's namespace; None when there is no such Secret.
#: Raises ``SecretUnreadable`` when it cannot tell.
SecretLabels = Callable[[str], Mapping[str, str] | None]


class SecretUnreadable(Exception):
    """A Secret's labels could not be read (the API server did not answer, or refused)."""


def prefetched(secrets: SecretLabels, wanted: Iterable[str]) -> SecretLabels:
    """``secrets`` asked now for each name in ``wanted``, and its answers (or failures)
    replayed later: the lookups go to the API server, and the decisions that read them run
    under a lock no network call should hold."""
    answers: dict[str, Mapping[str, str] | SecretUnreadable | None] = {}
    for name in wanted:
        if name not in answers:
            try:
                answers[name] = secrets(name)
            except SecretUnreadable as exc:
                answers[name] = exc

    def replay(name: str) -> Mapping[str, str] | None:
        answer = answers[name] if name in answers else secrets(name)
        if isinstance(answer, SecretUnreadable):
            raise answer
        return answer

    return replay


def _credentials_problem(provider: ProviderSpec, secrets: SecretLabels) -> tuple[str, str] | None:
    """Why the route's key may not be used: (reason, message), or None. Only a Secret that
    opted in to being a provider credential is sent anywhere; the message names the
    Secret, never its value."""
    ref = provider.credentials_secret_ref
    where = f"route {provider.name}: Secret {ref.name} (key {ref.key})"
    try:
        labels = secrets(ref.name)
    except SecretUnreadable as exc:
        return "CredentialsUnchecked", f"{where} could not be checked ({exc}); retrying"
    if labels is None:
        return "CredentialsNotOptedIn", f"{where} does not exist"
    if labels.get(PROVIDER_CREDENTIALS_LABEL) != "true":
        return "CredentialsNotOptedIn", (
            f"{where} is not labelled {PROVIDER_CREDENTIALS_LABEL}=true: the gateway sends "
            "only Secrets that opted in to being provider credentials to a provider "
            f"(kubectl label secret {ref.name} {PROVIDER_CREDENTIALS_LABEL}=true, if it "
            "holds this provider's key)"
        )
    return None


def decide_provider(
    provider: ProviderSpec,
    policies: Sequence[CompiledPolicy],
    secrets: SecretLabels | None = None,
) -> LicenseVerdict:
    """A hosted provider route against every policy, as a model's license is judged, and
    its key's Secret against the opt-in (``secrets``; None: not checked, as in ``aistack
    license check``, which has no cluster). A key that may not be used blocks the route
    whatever the policies' enforcement."""
    verdict = _combine(policies, lambda p: evaluate_provider(provider, p), None, None)
    if secrets is not None and (problem := _credentials_problem(provider, secrets)):
        reason, message = problem
        stale = message if reason == "CredentialsUnchecked" else None
        if not verdict.permitted:  # say all that stands in the way, not one at a time
            message = f"{message}; and {verdict.message}"
        return LicenseVerdict(False, True, reason, message, enforcement="Deny", stale=stale)
    return verdict


# ---------------------------------------------------------------- images


def evaluate_image(
    image: str, what: str, policy: CompiledPolicy, defaults: Iterable[str]
) -> PolicyVerdict:
    """Whether one policy lets a stack run ``image`` (named by ``what``): the operator's
    default images' repositories always, else what ``images.allow`` lists."""
    if policy.invalid is not None:
        return PolicyVerdict(
            False, "PolicyInvalid", f"image {image} of {what}, denied: this operator cannot "
            f"read LicensePolicy {policy.name} ({policy.invalid})",
        )  # fmt: skip
    ref = parse_image(image)
    if image in defaults:
        return PolicyVerdict(True, "ImageAllowed", f"image {image} of {what} is a default image")
    if policy.images_require_digest and ref.digest is None:
        return PolicyVerdict(
            False, "ImageNotAllowed", f"image {image} of {what} is not pinned by digest, and "
            f"policy {policy.name} requires it (images.requireDigest): name it "
            "<repository>@sha256:<digest>",
        )  # fmt: skip
    repositories = [parse_image(d).repository for d in defaults]
    pattern = covered(image, [*repositories, *policy.images_allow])
    if pattern is None:
        return PolicyVerdict(
            False, "ImageNotAllowed", f"image {image} of {what} is not one policy "
            f"{policy.name} allows: only the operator's default images' repositories and "
            "what images.allow lists may run",
        )  # fmt: skip
    return PolicyVerdict(True, "ImageAllowed", f"image {image} of {what} is allowed ({pattern})")


def decide_image(
    image: str, what: str, policies: Sequence[CompiledPolicy], defaults: Iterable[str]
) -> LicenseVerdict:
    """An image a stack names against every policy."""
    known = tuple(defaults)
    return _combine(policies, lambda p: evaluate_image(image, what, p, known), None, None)


def _combine(
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


#: license-expression builds its SPDX tables lazily and not thread-safely: stacks
#: reconciled in parallel right after start-up saw "mit" as an unknown id. One evaluation
#: at a time (each takes well under a millisecond once warm).
_LOCK = threading.Lock()


# ---------------------------------------------------------------- derivatives


def decide_derivative(
    label: str,
    model: ModelSpec,
    subject: Licensed,
    base: LicenseVerdict,
    policies: Sequence[CompiledPolicy],
    known: Mapping[str, CatalogEntry] | None = None,
    hub: HubClient | None = None,
    last: str | None = None,
    *,
    namespace: str | None = None,
) -> LicenseVerdict:
    """What runs on top of a model (an adapter, a draft model) against every policy: it
    is used only under its own license AND its model's. Its own license is resolved and
    judged like a model's (an exception may name its source); when the model is not
    permitted, neither is it. ``label``: how messages name it ("adapter x")."""
    verdict = decide(subject, policies, known, hub, last, namespace=namespace)
    prefix = f"{label} of model {model.name}: "
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


def _with_image(
    verdict: LicenseVerdict,
    model: ModelSpec,
    image: str | None,
    policies: Sequence[CompiledPolicy],
    defaults: Sequence[str],
) -> LicenseVerdict:
    """A model's verdict with the image it runs in judged too: a model whose image is not
    permitted does not run, whatever its license."""
    if image is None or not verdict.permitted:
        return verdict
    judged = decide_image(image, f"model {model.name}", policies, defaults)
    if judged.permitted and not judged.violation:
        return verdict
    if judged.permitted:  # a Warn or DryRun policy's violation: said, not enforced
        return replace(verdict, violation=True, reason=judged.reason, message=judged.message,
                       enforcement=judged.enforcement)  # fmt: skip
    return replace(
        judged, license=verdict.license, license_source=verdict.license_source,
        stale=verdict.stale,
    )  # fmt: skip


def decide_models(
    models: Sequence[ModelSpec],
    policies: Sequence[CompiledPolicy],
    hub: HubClient | None = None,
    last: Mapping[str, str] | None = None,
    *,
    namespace: str | None = None,
    vllm_image: str | None = None,
    default_images: Sequence[str] = (),
) -> dict[str, LicenseVerdict]:
    """Every model of ``models`` (with the image it runs in: its own, else ``vllm_image``
    when set), every adapter and every draft model, by name (adapter names are unique
    across the stack's models and adapters; drafts under ``speculative_key``).
    ``last``: by name, the license the hub gave before (see ``resolve``)."""
    last = last or {}
    out: dict[str, LicenseVerdict] = {}
    for m in models:
        base = decide(m, policies, hub=hub, last=last.get(m.name), namespace=namespace)
        base = out[m.name] = _with_image(base, m, m.image or vllm_image, policies, default_images)
        for a in m.adapters:
            out[a.name] = decide_derivative(
                f"adapter {a.name}", m, a, base, policies, hub=hub, last=last.get(a.name),
                namespace=namespace,
            )  # fmt: skip
        if (draft := draft_of(m)) is not None:
            key = speculative_key(m.name)
            out[key] = decide_derivative(
                f"draft model {draft.source}", m, draft, base, policies,
                hub=hub, last=last.get(key), namespace=namespace,
            )  # fmt: skip
    return out


def _named_images(stack: AIStack) -> list[tuple[str, str | None]]:
    """The images a stack names for its parts other than the models: (part, image), part
    being the component's image key (the registry's ``named_image``, which this module may
    not import: tests/test_components.py holds the two equal)."""
    spec = stack.spec
    return [
        ("ray", spec.ray.image if spec.ray.enabled else None),
        ("mlflow", spec.mlflow.image if spec.mlflow.enabled else None),
        ("gateway", spec.gateway.image if spec.gateway.enabled else None),
    ]


def decide_routes(
    stack: AIStack,
    policies: Sequence[CompiledPolicy],
    hub: HubClient | None = None,
    last: Mapping[str, str] | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> dict[str, LicenseVerdict]:
    """Every route of the stack by name (names are unique across them): its models, their
    adapters and drafts and its hosted providers (when it has a gateway to send them
    prompts); and the images it names for its other parts (``image_key``)."""
    out = decide_models(
        stack.spec.models, policies, hub=hub, last=last,
        namespace=stack.metadata.namespace or "default",
        vllm_image=stack.spec.vllm.image, default_images=default_images,
    )  # fmt: skip
    for p in stack.spec.gateway.providers if stack.spec.gateway.enabled else []:
        out[p.name] = decide_provider(p, policies, secrets)
    for part, image in _named_images(stack):
        if image is not None:
            out[image_key(part)] = decide_image(image, part, policies, default_images)
    return out


def last_hub_licenses(stack: AIStack) -> dict[str, str]:
    """Per model, adapter and draft, the license the hub gave for its current source and
    revision, as the stack's status recorded it: kept when the hub does not answer (an
    operator restarted during an outage of the hub does not stop the models that run)."""
    if stack.status is None:
        return {}
    specs: dict[str, Licensed] = {}
    for m in stack.spec.models:
        specs[m.name] = m
        specs |= {a.name: a for a in m.adapters}
        if (draft := draft_of(m)) is not None:
            specs[speculative_key(m.name)] = draft
    seen: list[tuple[str, ModelStatus | AdapterStatus | DraftStatus]] = [
        (s.name, s) for s in stack.status.models
    ]
    seen += [(a.name, a) for s in stack.status.models for a in s.adapters or []]
    seen += [(speculative_key(s.name), s.speculative) for s in stack.status.models if s.speculative]
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


def _licensed_of(model: ModelSpec) -> list[Licensed]:
    """A model, its adapters and its draft model."""
    draft = draft_of(model)
    return [model, *model.adapters, *([draft] if draft is not None else [])]


def _ask_hub(hub: HubClient, licensed: Iterable[Licensed]) -> None:
    """The Hub's answers for what the catalog does not know, asked before the lock is
    taken (they may take a network timeout); the client keeps them for the decision."""
    for x in licensed:
        if canonical_repo(x.source) not in catalog() and not is_storage(x.source):
            with contextlib.suppress(HubUnavailable):
                hub.card_license(x.source, x.revision)


def decide_stack(
    stack: AIStack,
    policies: Sequence[Mapping[str, Any]],
    hub: HubClient | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> dict[str, LicenseVerdict]:
    """Every model, adapter, draft, hosted provider and named image of the stack against
    the cluster's policies (raw objects), by name; what the reconciler asks, with the
    operator's hub bound (``aistack run --hub``), the stack's Secrets' labels
    (``secrets``) and the operator's default images."""
    if hub is not None:
        _ask_hub(hub, [x for m in stack.spec.models for x in _licensed_of(m)])
    last = last_hub_licenses(stack) if hub is not None else {}
    if secrets is not None and stack.spec.gateway.enabled:
        keys = [p.credentials_secret_ref.name for p in stack.spec.gateway.providers]
        secrets = prefetched(secrets, keys)  # outside the lock, like the Hub's answers
    with _LOCK:
        return decide_routes(
            stack, policies_from(policies), hub=hub, last=last, secrets=secrets,
            default_images=default_images,
        )  # fmt: skip


def _not_judged(why: str) -> LicenseVerdict:
    return LicenseVerdict(False, True, "NotJudged", why, enforcement="Deny")


@dataclass(frozen=True)
class _Record:
    """What a Deployment's record names (``names.LICENSED_ANNOTATION``)."""

    model: ModelSpec | None
    providers: tuple[ProviderSpec, ...]
    image: str | None

    @classmethod
    def read(cls, text: str) -> _Record:
        data = json.loads(text)
        if not isinstance(data, Mapping):
            raise TypeError("not an object")
        model = ModelSpec.model_validate(data["model"]) if "model" in data else None
        providers = tuple(ProviderSpec.model_validate(p) for p in data.get("providers") or [])
        image = data.get("image")
        return cls(model, providers, None if image is None else str(image))

    def prefetch(self, hub: HubClient | None, secrets: SecretLabels | None) -> SecretLabels | None:
        """Ask the Hub and the API server now, outside the lock (``decide_stack``)."""
        if hub is not None and self.model is not None:
            _ask_hub(hub, _licensed_of(self.model))
        if secrets is None:
            return None
        return prefetched(secrets, [p.credentials_secret_ref.name for p in self.providers])

    def judge(
        self,
        policies: Sequence[CompiledPolicy],
        namespace: str,
        hub: HubClient | None,
        secrets: SecretLabels | None,
        default_images: Sequence[str],
    ) -> list[LicenseVerdict]:
        if self.model is not None:
            verdicts = decide_models(
                [self.model], policies, hub=hub, namespace=namespace,
                vllm_image=self.image, default_images=default_images,
            )  # fmt: skip
            return list(verdicts.values())
        out = [decide_provider(p, policies, secrets) for p in self.providers]
        if self.image is not None:
            out.append(decide_image(self.image, "this part", policies, default_images))
        return out


def decide_record(
    record: str | None,
    policies: Sequence[Mapping[str, Any]],
    namespace: str,
    hub: HubClient | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> list[LicenseVerdict]:
    """What one Deployment runs, as its record says (``names.LICENSED_ANNOTATION``: the
    model with its adapters and draft, the providers, the image the stack named), judged
    under the cluster's policies now: what the reconciler asks while the stack's spec
    cannot be read. A record that is missing or cannot be read is not permitted: what
    cannot be judged does not run."""
    if record is None:
        return [_not_judged("it carries no record of what it runs (an older operator made it)")]
    try:
        read = _Record.read(record)
    except (ValueError, TypeError, KeyError, ValidationError) as exc:
        return [_not_judged(f"its record of what it runs cannot be read ({exc})")]
    secrets = read.prefetch(hub, secrets)
    with _LOCK:
        return read.judge(policies_from(policies), namespace, hub, secrets, default_images)


def admission_messages(
    stack: AIStack,
    policies: Sequence[Mapping[str, Any]],
    hub: HubClient | None = None,
    *,
    secrets: SecretLabels | None = None,
    default_images: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """What the webhook says of a stack: the messages that refuse it (what a ``Deny``
    policy blocks, keys whose Secret did not opt in) and its admission warnings
    (violations of a ``Warn`` policy, and unknown or unverified licenses a policy lets
    through with a warning; violations of a ``DryRun`` policy are only reported in the
    stack's status)."""
    verdicts = decide_stack(stack, policies, hub, secrets=secrets, default_images=default_images)
    return admission_verdicts(verdicts.values())


def admission_verdicts(verdicts: Iterable[LicenseVerdict]) -> tuple[list[str], list[str]]:
    """The messages that refuse a stack at admission, and its warnings (see
    ``admission_messages``)."""
    verdicts = list(verdicts)
    denied = [v.message for v in verdicts if not v.permitted]
    warned = [
        v.message
        for v in verdicts
        if v.permitted and (v.enforcement == "Warn" or v.reason in WARNING_REASONS)
    ]
    return denied, warned


def judged_subjects(stack: AIStack) -> dict[str, str]:
    """Per verdict key (``decide_routes``), the part of the spec its verdict is made from,
    as canonical JSON: a model's entry without its adapters and draft, with the stack's
    vLLM image; an adapter's entry; a draft; a provider's entry; a part's image. Two
    objects that give a key the same subject are judged the same under one policy."""

    def dump(value: Any) -> Any:
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)

    out: dict[str, str] = {}
    for m in stack.spec.models:
        model = {k: v for k, v in dump(m).items() if k not in ("adapters", "speculative")}
        out[m.name] = json.dumps({"model": model, "vllmImage": stack.spec.vllm.image},
                                 sort_keys=True)  # fmt: skip
        for a in m.adapters:
            out[a.name] = json.dumps({"model": m.name, "adapter": dump(a)}, sort_keys=True)
        if m.speculative is not None:
            out[speculative_key(m.name)] = json.dumps(dump(m.speculative), sort_keys=True)
    for p in stack.spec.gateway.providers if stack.spec.gateway.enabled else []:
        out[p.name] = json.dumps(dump(p), sort_keys=True)
    for part, image in _named_images(stack):
        if image is not None:
            out[image_key(part)] = json.dumps(image)
    return out


def update_verdicts(
    verdicts: Mapping[str, LicenseVerdict], new: AIStack, old: AIStack | None
) -> tuple[list[str], list[str]]:
    """What the webhook says of an UPDATE: ``admission_verdicts`` of what the change adds
    or alters. A denied model, adapter, draft, provider or image that the old object
    already had, unchanged (``judged_subjects``), is not refused again: a policy tightened
    under a running stack must not fail every later apply of it (Argo CD re-applies
    unchanged objects). It is named in a warning instead, and the operator's enforcement
    keeps it from running. Without a readable old object, the whole object is judged."""
    if old is None:
        return admission_verdicts(verdicts.values())
    before, after = judged_subjects(old), judged_subjects(new)
    kept = {
        key
        for key, verdict in verdicts.items()
        if not verdict.permitted and key in before and before[key] == after.get(key)
    }
    denied, warned = admission_verdicts(v for k, v in verdicts.items() if k not in kept)
    warned += [
        f"{_subject_name(key)} is unchanged by this update, so it is not refused again; the "
        f"operator keeps it from running while the policy denies it: {verdicts[key].message}"
        for key in sorted(kept)
    ]
    return denied, warned


def _subject_name(key: str) -> str:
    """A verdict key (``decide_routes``) in words."""
    kind, _, name = key.partition(":")
    if key == speculative_key(name):
        return f"the draft model of {name}"
    if key == image_key(name):
        return f"the {name} image"
    return f"{kind!r}"


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
