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
        ok = m.license is not None and "NC" not in m.license
        out[m.name] = LicenseVerdict(
            permitted=True,
            violation=not ok,
            reason="LicenseAllowed" if ok else "LicenseUnknown",
            message=f"{m.source}: {m.license}",
            license=m.license,
            license_source="Declared",
        )
    return out
