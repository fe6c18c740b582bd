"""What the webhook says: the messages that refuse a stack, its warnings, and what an
update adds or alters."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aistack.api.v1alpha1 import AIStack
from aistack.hub import HubClient
from aistack.licenses.decision import _named_images, decide_stack
from aistack.licenses.policy import WARNING_REASONS
from aistack.licenses.providers import SecretLabels
from aistack.names import image_key, speculative_key
from aistack.verdicts import LicenseVerdict


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
    as canonical JSON: a model's entry without its adapters and draft, with its engine and
    the image the stack names for it; an adapter's entry; a draft; a provider's entry; a
    part's image. Two objects that give a key the same subject are judged the same under
    one policy."""

    def dump(value: Any) -> Any:
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)

    out: dict[str, str] = {}
    for m in stack.spec.models:
        model = {k: v for k, v in dump(m).items() if k not in ("adapters", "speculative")}
        subject = {"model": model, "engine": stack.spec.engine_of(m),
                   "image": stack.spec.image_of(m)}  # fmt: skip
        out[m.name] = json.dumps(subject, sort_keys=True)
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
