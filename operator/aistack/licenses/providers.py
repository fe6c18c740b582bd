"""Hosted providers: judged by the host prompts go to, and the opt-in of the Secret that
holds their key."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from aistack.api.v1alpha1 import (
    ENDPOINT_PROVIDERS,
    PROVIDER_HOSTS,
    ProviderSpec,
    normalize_host,
)
from aistack.licenses.policy import CompiledPolicy, PolicyVerdict, combine
from aistack.names import PROVIDER_CREDENTIALS_LABEL
from aistack.verdicts import LicenseVerdict


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
    verdict = combine(policies, lambda p: evaluate_provider(provider, p), None, None)
    if secrets is not None and (problem := _credentials_problem(provider, secrets)):
        reason, message = problem
        stale = message if reason == "CredentialsUnchecked" else None
        if not verdict.permitted:  # say all that stands in the way, not one at a time
            message = f"{message}; and {verdict.message}"
        return LicenseVerdict(False, True, reason, message, enforcement="Deny", stale=stale)
    return verdict
