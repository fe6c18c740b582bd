"""Model licenses: resolve each model's license, evaluate it against the LicensePolicies.

Pure given its inputs (the catalog is package data; the Hub is asked through the client
passed in, see ``aistack.hub``; a Secret's labels through the lookup passed in). Names
resolve to models, not spellings: a Hugging Face repo id is matched case-insensitively and
through the Hub's renames (``data/model-aliases.tsv``, and the id the Hub answers under).
Resolution order, recorded as ``licenseSource``: the catalog shipped in the package, then
the model card on the Hugging Face Hub at the pinned revision (when the operator is allowed
to ask it), then the license declared in the spec (the only source for pvc:// and s3://).
A declared license that contradicts the catalog or the card denies the model
(``LicenseMismatch``); one that nothing verified counts for what the policy's
``unverified`` says. No answer never means permitted: an unresolved license is
``unknown``, and the policy's ``unknown`` setting decides.

Evaluation parses SPDX expressions with license-expression: ``OR`` is permitted when any
branch is, ``AND`` only when all are, ``X WITH exception`` is judged by ``X`` (the
exception must be an SPDX license exception); deny wins over allow; allow lists are
exhaustive (a license on neither list is not permitted). Several policies all apply (the
strictest wins); with none, the built-in default policy (the same as
``data/default-licensepolicy.yaml``) applies. Hosted providers are judged by the host
prompts go to, container images by their repository.

The package: ``catalog`` (the models the package knows), ``spdx`` (expressions),
``resolution`` (which license a model has), ``policy`` (LicensePolicy: compile, judge, its
status), ``providers`` (hosted providers), ``decision`` (a whole stack, and a Deployment's
record), ``admission`` (what the webhook says). Their public names are handed on here
(and the lock the tests hold).
"""

from __future__ import annotations

from aistack.licenses.admission import (
    admission_messages,
    admission_verdicts,
    judged_subjects,
    update_verdicts,
)
from aistack.licenses.catalog import (
    CatalogEntry,
    Draft,
    Licensed,
    Source,
    canonical_repo,
    catalog,
    draft_of,
)
from aistack.licenses.decision import (
    _LOCK,
    decide,
    decide_derivative,
    decide_image,
    decide_models,
    decide_record,
    decide_routes,
    decide_stack,
    evaluate_image,
    last_hub_licenses,
)
from aistack.licenses.policy import (
    WARNING_REASONS,
    CompiledException,
    CompiledPolicy,
    Leaf,
    PolicyVerdict,
    compile_policy,
    default_policy,
    evaluate_one,
    judge,
    policies_from,
    policy_status,
    unreadable_policy,
)
from aistack.licenses.providers import (
    SecretLabels,
    SecretUnreadable,
    decide_provider,
    evaluate_provider,
    host_matches,
    prefetched,
)
from aistack.licenses.resolution import (
    Resolution,
    resolve,
)
from aistack.licenses.spdx import (
    ExpressionProblem,
    card_spdx,
    hub_to_spdx,
    normalize_id,
    parse,
    same_license,
)

__all__ = [
    "WARNING_REASONS",
    "_LOCK",
    "CatalogEntry",
    "CompiledException",
    "CompiledPolicy",
    "Draft",
    "ExpressionProblem",
    "Leaf",
    "Licensed",
    "PolicyVerdict",
    "Resolution",
    "SecretLabels",
    "SecretUnreadable",
    "Source",
    "admission_messages",
    "admission_verdicts",
    "canonical_repo",
    "card_spdx",
    "catalog",
    "compile_policy",
    "decide",
    "decide_derivative",
    "decide_image",
    "decide_models",
    "decide_provider",
    "decide_record",
    "decide_routes",
    "decide_stack",
    "default_policy",
    "draft_of",
    "evaluate_image",
    "evaluate_one",
    "evaluate_provider",
    "host_matches",
    "hub_to_spdx",
    "judge",
    "judged_subjects",
    "last_hub_licenses",
    "normalize_id",
    "parse",
    "policies_from",
    "policy_status",
    "prefetched",
    "resolve",
    "same_license",
    "unreadable_policy",
    "update_verdicts",
]
