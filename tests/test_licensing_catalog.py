"""The shipped model-license catalog and the Hugging Face license ids it is written in.

The catalog is data people edit by hand: these tests keep it a clean table, keep its
``spdx`` column equal to what resolution really gives, and pin what newly checked models
resolve to under the shipped default policy and under the example team policy.
"""

from __future__ import annotations

import csv
import re
from importlib import resources
from typing import Any

import pytest
import yaml

from aistack.licenses import decide, hub_to_spdx, parse, policies_from, resolve
from helpers import ROOT, stack

COLUMNS = ["repo_id", "hub_license", "license_name", "spdx", "status", "source", "note"]
STATUSES = {"verified", "verified-at-revision", "secondary", "unverified"}


def rows() -> list[dict[str, str]]:
    # Read through the package, as the operator does: the file must ship with it.
    text = resources.files("aistack").joinpath("data/model-licenses.tsv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.reader(lines, delimiter="\t")
    header = next(reader)
    assert header == COLUMNS
    out = []
    for number, fields in enumerate(reader, start=2):
        assert len(fields) == len(COLUMNS), f"data line {number} has {len(fields)} fields"
        out.append(dict(zip(COLUMNS, fields, strict=True)))
    return out


def model(source: str, **kw: Any) -> Any:
    return stack(models=[{"name": "m", "source": source, **kw}]).spec.models[0]


def team_policy() -> list[Any]:
    body = yaml.safe_load((ROOT / "examples" / "license-policy.yaml").read_text())
    return policies_from([body])


ROWS = rows()


def test_the_catalog_is_a_clean_table() -> None:
    assert len(ROWS) >= 60
    ids = [r["repo_id"].lower() for r in ROWS]
    assert len(ids) == len(set(ids)), "a repo id is listed twice"
    for r in ROWS:
        where = r["repo_id"]
        assert re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", where), where
        assert r["status"] in STATUSES, where
        assert r["hub_license"] and r["source"], where
        assert r["hub_license"] == r["hub_license"].strip().lower(), f"{where}: lower case"
        assert not r["license_name"] or r["hub_license"] == "other", (
            f"{where}: license_name only goes with license: other"
        )
        if r["status"] == "unverified":
            assert r["hub_license"] == "unknown", f"{where}: an unverified entry must not grant"


def test_the_spdx_column_is_what_resolution_gives() -> None:
    for r in ROWS:
        expected = hub_to_spdx(r["hub_license"], r["license_name"])
        assert r["spdx"] == (expected or ""), r["repo_id"]
        resolved = resolve(model(r["repo_id"]))
        assert resolved.license == (r["spdx"] or None), r["repo_id"]
        assert resolved.source == ("Catalog" if r["spdx"] else None), r["repo_id"]
        if r["spdx"]:
            assert str(parse(r["spdx"])) == r["spdx"], f"{r['repo_id']}: not in canonical form"


def test_every_entry_without_a_license_is_denied_by_default() -> None:
    unknown = [r for r in ROWS if not r["spdx"]]
    assert len(unknown) >= 8
    for r in unknown:
        verdict = decide(model(r["repo_id"]), policies_from([]))
        assert (verdict.permitted, verdict.reason) == (False, "LicenseUnknown"), r["repo_id"]
        assert "which names no license" in verdict.message, verdict.message


# Entries added or re-checked with the catalog's second pass: (repo, SPDX, permitted under
# the default policy, reason, permitted under examples/license-policy.yaml).
CHECKED = [
    ("tiiuae/falcon-7b", "Apache-2.0", True, "LicenseAllowed", True),
    ("tiiuae/falcon-180B", None, False, "LicenseUnknown", False),
    ("tiiuae/falcon-rw-1b", None, False, "LicenseUnknown", False),
    ("bigcode/starcoder2-15b", "LicenseRef-bigcode-openrail-m", False, "LicenseNotAllowed", False),
    ("allenai/OLMo-2-1124-7B", "Apache-2.0", True, "LicenseAllowed", True),
    ("allenai/OLMo-2-1124-13B", "Apache-2.0", True, "LicenseAllowed", True),
    ("allenai/OLMo-7B-0424-hf", "Apache-2.0", True, "LicenseAllowed", True),
    ("BAAI/bge-m3", "MIT", True, "LicenseAllowed", True),
    ("intfloat/e5-mistral-7b-instruct", "MIT", True, "LicenseAllowed", True),
    ("nomic-ai/nomic-embed-text-v1.5", "Apache-2.0", True, "LicenseAllowed", True),
    ("ibm-granite/granite-3.3-8b-instruct", "Apache-2.0", True, "LicenseAllowed", True),
    ("deepseek-ai/DeepSeek-V3", None, False, "LicenseUnknown", False),
    ("deepseek-ai/DeepSeek-V2-Lite-Chat", None, False, "LicenseUnknown", False),
    ("deepseek-ai/DeepSeek-R1-0528", "MIT", True, "LicenseAllowed", True),
    ("CohereForAI/c4ai-command-r-v01", None, False, "LicenseUnknown", False),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", None, False, "LicenseUnknown", False),
    ("microsoft/Phi-3-medium-128k-instruct", "MIT", True, "LicenseAllowed", True),
    ("microsoft/Phi-4-mini-instruct", "MIT", True, "LicenseAllowed", True),
    ("Qwen/Qwen2.5-Coder-32B-Instruct", "Apache-2.0", True, "LicenseAllowed", True),
    ("Qwen/Qwen3-8B-AWQ", "Apache-2.0", True, "LicenseAllowed", True),
    ("mistralai/Ministral-3-8B-Instruct-2512", "Apache-2.0", True, "LicenseAllowed", True),
    ("mistralai/Mistral-Large-3-675B-Instruct-2512", "Apache-2.0", True, "LicenseAllowed", True),
    ("nvidia/Llama-4-Scout-17B-16E-Instruct-FP4", "LicenseRef-nvidia-open-model-license", False,
     "LicenseNotAllowed", False),
    ("meta-llama/Llama-3.1-8B-Instruct", "LicenseRef-llama3.1", False, "LicenseNotAllowed", True),
    ("meta-llama/Llama-3.3-70B-Instruct", "LicenseRef-llama3.3", False, "LicenseNotAllowed", False),
    ("CohereForAI/c4ai-command-r-plus", "CC-BY-NC-4.0", False, "LicenseDenied", False),
    ("facebook/opt-125m", None, False, "LicenseUnknown", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("repo", "spdx", "permitted", "reason", "team"), CHECKED, ids=[c[0] for c in CHECKED]
)
def test_checked_models(
    repo: str, spdx: str | None, permitted: bool, reason: str, team: bool
) -> None:
    verdict = decide(model(repo), policies_from([]))
    assert verdict.license == spdx
    assert (verdict.permitted, verdict.reason) == (permitted, reason)
    assert verdict.violation is not permitted  # the default policy enforces (Deny)
    assert decide(model(repo), team_policy()).permitted is team


def test_repo_ids_match_whatever_their_case() -> None:
    # Hub repo ids are case-insensitive; a stack may spell them differently.
    assert resolve(model("tiiuae/Falcon-7B")).license == "Apache-2.0"
    assert resolve(model("BAAI/BGE-M3")).source == "Catalog"


# Every id of the Hub's license table (hub-docs docs/hub/repositories-licenses.md at
# 008d54d) plus the Llama 3.x and 4 ids added since, with what it resolves to. Ids that name
# a family (no version) must not become one version's SPDX id.
HUB_IDS: dict[str, str | None] = {
    "apache-2.0": "Apache-2.0",
    "mit": "MIT",
    "openrail": "LicenseRef-openrail",
    "bigscience-openrail-m": "LicenseRef-bigscience-openrail-m",
    "creativeml-openrail-m": "LicenseRef-creativeml-openrail-m",
    "bigscience-bloom-rail-1.0": "LicenseRef-bigscience-bloom-rail-1.0",
    "bigcode-openrail-m": "LicenseRef-bigcode-openrail-m",
    "afl-3.0": "AFL-3.0",
    "artistic-2.0": "Artistic-2.0",
    "bsl-1.0": "BSL-1.0",
    "bsd": "LicenseRef-bsd",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-3-clause-clear": "BSD-3-Clause-Clear",
    "c-uda": "LicenseRef-c-uda",
    "cc": "LicenseRef-cc",
    "cc0-1.0": "CC0-1.0",
    "cc-by-2.0": "CC-BY-2.0",
    "cc-by-2.5": "CC-BY-2.5",
    "cc-by-3.0": "CC-BY-3.0",
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "cc-by-nc-2.0": "CC-BY-NC-2.0",
    "cc-by-nc-3.0": "CC-BY-NC-3.0",
    "cc-by-nc-4.0": "CC-BY-NC-4.0",
    "cc-by-nd-4.0": "CC-BY-ND-4.0",
    "cc-by-nc-nd-3.0": "CC-BY-NC-ND-3.0",
    "cc-by-nc-nd-4.0": "CC-BY-NC-ND-4.0",
    "cc-by-nc-sa-2.0": "CC-BY-NC-SA-2.0",
    "cc-by-nc-sa-3.0": "CC-BY-NC-SA-3.0",
    "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0",
    "cdla-sharing-1.0": "CDLA-Sharing-1.0",
    "cdla-permissive-1.0": "CDLA-Permissive-1.0",
    "cdla-permissive-2.0": "CDLA-Permissive-2.0",
    "wtfpl": "WTFPL",
    "ecl-2.0": "ECL-2.0",
    "epl-1.0": "EPL-1.0",
    "epl-2.0": "EPL-2.0",
    "etalab-2.0": "etalab-2.0",
    "eupl-1.1": "EUPL-1.1",
    "agpl-3.0": "AGPL-3.0-only",
    "gfdl": "LicenseRef-gfdl",
    "gpl": "LicenseRef-gpl",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-3.0": "GPL-3.0-only",
    "lgpl": "LicenseRef-lgpl",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-3.0": "LGPL-3.0-only",
    "isc": "ISC",
    "lppl-1.3c": "LPPL-1.3c",
    "ms-pl": "MS-PL",
    "mpl-2.0": "MPL-2.0",
    "odc-by": "LicenseRef-odc-by",
    "odbl": "LicenseRef-odbl",
    "openrail++": "LicenseRef-openrail++",
    "osl-3.0": "OSL-3.0",
    "postgresql": "PostgreSQL",
    "ofl-1.1": "OFL-1.1",
    "ncsa": "NCSA",
    "unlicense": "Unlicense",
    "zlib": "Zlib",
    "pddl": "LicenseRef-pddl",
    "lgpl-lr": "LicenseRef-lgpl-lr",
    "deepfloyd-if-license": "LicenseRef-deepfloyd-if-license",
    "llama2": "LicenseRef-llama2",
    "llama3": "LicenseRef-llama3",
    "llama3.1": "LicenseRef-llama3.1",
    "llama3.2": "LicenseRef-llama3.2",
    "llama3.3": "LicenseRef-llama3.3",
    "llama4": "LicenseRef-llama4",
    "gemma": "LicenseRef-gemma",
    "unknown": None,
    "other": None,
}
#: Rows of the Hub's table whose full name says "family" (or names no version).
FAMILIES = {"openrail", "bsd", "cc", "gfdl", "gpl", "lgpl", "odc-by", "odbl", "openrail++", "pddl"}


@pytest.mark.parametrize(("hub_id", "spdx"), HUB_IDS.items(), ids=list(HUB_IDS))
def test_hub_license_ids(hub_id: str, spdx: str | None) -> None:
    assert hub_to_spdx(hub_id) == spdx
    if hub_id in FAMILIES:
        assert spdx == f"LicenseRef-{hub_id}", "a family id must not pick one version"
    elif spdx is not None:
        # What evaluation sees is what the mapping says (families: see test_licensing_gaps).
        assert str(parse(spdx)) == spdx


def test_hub_ids_in_any_case_and_with_a_name() -> None:
    assert hub_to_spdx("Apache-2.0") == "Apache-2.0"
    assert hub_to_spdx(" MIT ") == "MIT"
    assert hub_to_spdx("other", "qwen-research") == "LicenseRef-qwen-research"
    assert hub_to_spdx("other", "") is None
    assert hub_to_spdx("") is None
