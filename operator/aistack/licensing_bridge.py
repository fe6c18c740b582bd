"""Adapter from license decisions to what the reconciler needs (interim: declared only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aistack.api.v1alpha1 import AIStack
from aistack.status import LicenseVerdict


def license_verdicts(
    stack: AIStack, policies: list[Mapping[str, Any]]
) -> dict[str, LicenseVerdict]:
    out = {}
    for m in stack.spec.models:
        ok = True
        out[m.name] = LicenseVerdict(
            permitted=True,
            violation=not ok,
            reason="LicenseAllowed" if ok else "LicenseUnknown",
            message=f"{m.source}: {m.license}",
            license=m.license,
            license_source="Declared",
        )
    return out


def admission_messages(
    stack: AIStack, policies: list[Mapping[str, Any]]
) -> tuple[list[str], list[str]]:
    verdicts = license_verdicts(stack, policies)
    denied = [v.message for v in verdicts.values() if not v.permitted]
    warned = [v.message for v in verdicts.values() if v.permitted and v.violation]
    return denied, warned
