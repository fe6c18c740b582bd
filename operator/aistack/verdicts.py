"""What the license decision says of one thing a stack runs or sends to: a type of its own,
below the decision (``licenses``) and everything that reads its verdicts (status, metrics,
the webhook), so that none of them needs the decision's module for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How a violated policy acts: ``Deny`` blocks, ``Warn`` and ``DryRun`` only report.
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
