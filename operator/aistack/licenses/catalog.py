"""The catalog of well-known models and their licenses (package data), what a licensed
thing is (a model, an adapter, a draft), and the names a repo goes by."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal, Protocol

from aistack.api.v1alpha1 import ModelSpec
from aistack.licenses.spdx import hub_to_spdx

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
