"""Resolution: which license a model has, and where that came from (catalog, Hub card,
declaration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from aistack.api.v1alpha1 import is_storage
from aistack.hub import HubClient, HubUnavailable
from aistack.licenses.catalog import CatalogEntry, Licensed, Source, canonical_repo, catalog
from aistack.licenses.spdx import card_spdx, same_license


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


def _from_hub(
    model: Licensed, known: Mapping[str, CatalogEntry], hub: HubClient, last: str | None
) -> tuple[Resolution | None, str | None]:
    """The license of a repo's card at the pinned revision (or, when the Hub does not
    answer, the last one it gave), or the catalog's entry for the name the Hub answers
    under; with why the Hub did not answer, if it did not."""
    at = f"Hugging Face card at {model.revision}" if model.revision else "Hugging Face card"
    stale = None
    try:
        card = hub.card_license(model.source, model.revision)
    except HubUnavailable as exc:
        stale = exc.reason
        kept = card_spdx(exc.last) if exc.last is not None else last
        if kept is not None:
            found = _checked(model, kept, "Hub", f"{at}, as last read", f"{at}, as last read")
            return replace(found, stale=f"{stale}; kept its last answer, {kept}"), stale
        card = None
    renamed = known.get(canonical_repo(card.repo_id)) if card and card.repo_id else None
    if renamed is not None and renamed.spdx is not None:
        return _from_catalog(model, renamed, renamed.spdx), stale
    spdx = None if card is None else card_spdx(card)
    if spdx is not None:
        return _checked(model, spdx, "Hub", at, f"verified on its {at}"), stale
    return None, stale


def _unresolved(model: Licensed, entry: CatalogEntry | None, stale: str | None) -> Resolution:
    """What nothing verified: the declared license, or unknown and why."""
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
    on_hub = not is_storage(model.source)
    entry = known.get(canonical_repo(model.source)) if on_hub else None
    if entry is not None and entry.spdx is not None:
        return _from_catalog(model, entry, entry.spdx)
    stale = None
    if on_hub and hub is not None:
        found, stale = _from_hub(model, known, hub, last)
        if found is not None:
            return found
    return _unresolved(model, entry, stale)
