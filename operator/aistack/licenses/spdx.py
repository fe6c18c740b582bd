"""SPDX license expressions: parsing (license-expression), normalising ids, the Hub's
license keys."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

from license_expression import (
    ExpressionError,
    get_license_index,
    load_licensing_from_license_index,
)

from aistack.hub import CardLicense


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
