"""What the reconciler and the webhook ask of license governance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aistack.api.v1alpha1 import AIStack
from aistack.licenses import HubClient, decide_stack
from aistack.status import LicenseVerdict

#: Set by `aistack run --hub`: look licenses up on the Hugging Face Hub.
HUB: HubClient | None = None


def license_verdicts(
    stack: AIStack, policies: Sequence[Mapping[str, Any]]
) -> dict[str, LicenseVerdict]:
    return decide_stack(stack, policies, HUB)


def admission_messages(
    stack: AIStack, policies: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[str]]:
    """Messages that refuse the stack (enforced denials) and admission warnings (Warn)."""
    verdicts = license_verdicts(stack, policies)
    denied = [v.message for v in verdicts.values() if not v.permitted]
    warned = [
        v.message for v in verdicts.values() if v.permitted and v.violation and "Warn:" in v.message
    ]
    return denied, warned
