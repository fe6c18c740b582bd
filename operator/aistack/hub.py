"""The Hugging Face Hub: what a model card says its license is.

The only module of the operator that asks the Hub; ``aistack.licenses`` turns the answer
into an SPDX expression and judges it. The client is made by whoever runs the operator
(``aistack run --hub``) and passed in; nothing here is global.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aistack import metrics


@dataclass(frozen=True)
class CardLicense:
    """What a model card says: the hub license id and, for ``other``, its name."""

    hub_license: str
    license_name: str = ""
    #: The id the Hub answered under: a renamed repo's new name (the Hub redirects).
    repo_id: str = ""


class HubUnavailable(Exception):
    """The hub gave no answer this time (timeout, network, 5xx, rate limit): a transient
    failure, never a permission and never a reason to stop a model that runs.
    ``last`` is the hub's last answer for the same card (None: no answer yet, or the
    card named no license)."""

    def __init__(self, reason: str, *, last: CardLicense | None = None):
        super().__init__(reason)
        self.reason = reason
        self.last = last


class HubClient(Protocol):
    """Looks a model card's license up. None is the hub's answer that the card names no
    license (no such repo, gated without a token, no license on the card); a hub that
    does not answer raises ``HubUnavailable``. Neither is ever a permission."""

    def card_license(self, repo_id: str, revision: str | None) -> CardLicense | None: ...


def card_license_of(card_data: Mapping[str, Any] | None, tags: Sequence[str]) -> CardLicense | None:
    """The license a card declares: ``license`` (+ ``license_name``), else a ``license:`` tag."""
    card = dict(card_data or {})
    lic = card.get("license")
    if isinstance(lic, list):  # some cards list several: each must be acceptable
        lic = " AND ".join(str(x) for x in lic) if len(lic) > 1 else (lic[0] if lic else None)
    if isinstance(lic, str) and lic:
        return CardLicense(lic, str(card.get("license_name") or ""))
    for tag in tags:
        if tag.startswith("license:"):
            return CardLicense(tag.removeprefix("license:"))
    return None


def _definitive(exc: Exception) -> bool:
    """Whether a failed lookup is the hub's answer (the repo, revision or card is not
    there for us) rather than no answer (network, timeout, 5xx, rate limit)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError | RepositoryNotFoundError | RevisionNotFoundError):
        return True
    if isinstance(exc, HfHubHTTPError):
        code = getattr(exc.response, "status_code", None)
        return code is not None and 400 <= int(code) < 500 and int(code) not in (408, 429)
    return False


class HfHub:
    """The Hugging Face Hub through ``huggingface_hub``, with a short timeout and a cache.

    An answer is kept for ``ttl`` seconds. A lookup that gets no answer is retried after
    ``retry`` seconds, doubling up to ``ttl`` while the hub stays away; meanwhile it fails
    at once with ``HubUnavailable``, carrying the card's last answer when there was one
    (a verdict made from it stays good: an outage of the hub never stops a model).
    ``endpoint``: another hub (or a mirror); default ``HF_ENDPOINT`` or huggingface.co.
    """

    def __init__(
        self,
        *,
        timeout: float = 3.0,
        ttl: float = 600.0,
        retry: float = 10.0,
        token: str | None = None,
        endpoint: str | None = None,
    ):
        self.timeout = timeout
        self.ttl = ttl
        self.retry = retry
        self.token = token
        self.endpoint = endpoint
        #: (repo, revision) -> (good until, answer); kept after expiry as the last answer.
        self._answers: dict[tuple[str, str | None], tuple[float, CardLicense | None]] = {}
        #: (repo, revision) -> (next try, current delay, why the last try failed).
        self._failures: dict[tuple[str, str | None], tuple[float, float, str]] = {}
        self._lock = threading.Lock()

    def _unavailable(self, key: tuple[str, str | None], reason: str) -> HubUnavailable:
        with self._lock:
            last = self._answers.get(key)
        return HubUnavailable(reason, last=None if last is None else last[1])

    def card_license(self, repo_id: str, revision: str | None) -> CardLicense | None:
        key = (repo_id, revision)
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get(key)
            failed = self._failures.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if failed is not None and failed[0] > now:
            raise self._unavailable(key, failed[2])
        answer: CardLicense | None
        try:
            from huggingface_hub import HfApi

            info = HfApi(endpoint=self.endpoint).model_info(
                repo_id,
                revision=revision,
                timeout=self.timeout,
                expand=["cardData", "tags"],
                token=self.token or False,
            )
            card = info.card_data.to_dict() if info.card_data is not None else {}  # type: ignore[no-untyped-call]
            answer = card_license_of(card, info.tags or [])
            if answer is not None and info.id:
                answer = replace(answer, repo_id=str(info.id))
        except Exception as exc:
            if not _definitive(exc):
                metrics.HUB_LOOKUPS.labels("unavailable").inc()
                delay = self.retry if failed is None else min(failed[1] * 2, self.ttl)
                reason = f"the Hugging Face Hub did not answer ({type(exc).__name__}: {exc})"
                reason = reason[:300]
                with self._lock:
                    self._failures[key] = (now + delay, delay, reason)
                raise self._unavailable(key, reason) from exc
            answer = None  # no such repo or revision, gated without a token: "not said"
        metrics.HUB_LOOKUPS.labels("found" if answer is not None else "no_license").inc()
        with self._lock:
            self._answers[key] = (now + self.ttl, answer)
            self._failures.pop(key, None)
        return answer
