"""The webhook judges what an UPDATE adds or alters, not what it re-applies: a policy
tightened under a running stack must not fail every later apply (Argo CD re-applies
unchanged objects), while anything the change brings in is refused as on CREATE."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.api import AIStack
from aistack.licenses import admission_verdicts, decide_stack, judged_subjects, update_verdicts
from helpers import stack, trusting_policy

NC = {"name": "nc", "source": "org/nc-model", "license": "CC-BY-NC-4.0", "gpus": 1}
MIT = {"name": "mit", "source": "org/mit-model", "license": "MIT", "gpus": 1}
POLICY = [trusting_policy()]


def judge(new: AIStack, old: AIStack | None) -> tuple[list[str], list[str]]:
    return update_verdicts(decide_stack(new, POLICY), new, old)


def with_models(*models: dict[str, Any], **spec: Any) -> AIStack:
    return stack(models=[copy.deepcopy(m) for m in models], **spec)


def test_a_create_is_judged_whole() -> None:
    s = with_models(MIT, NC)
    denied, _ = judge(s, None)
    assert denied == ["org/nc-model is under CC-BY-NC-4.0, which policy default denies"]
    assert (denied, judge(s, None)[1]) == admission_verdicts(decide_stack(s, POLICY).values())


def test_an_unchanged_denied_model_is_not_refused_again_but_named_in_a_warning() -> None:
    old = with_models(MIT, NC)
    denied, warned = judge(with_models(MIT, NC), old)
    assert denied == []
    assert len(warned) == 1
    assert warned[0] == (
        "'nc' is unchanged by this update, so it is not refused again; the operator keeps it "
        "from running while the policy denies it: org/nc-model is under CC-BY-NC-4.0, which "
        "policy default denies"
    )


def test_a_change_elsewhere_in_the_stack_does_not_refuse_what_it_left_alone() -> None:
    old = with_models(MIT, NC)
    new = with_models(MIT | {"gpus": 2}, NC, mlflow={"enabled": False})
    assert judge(new, old)[0] == []


def test_what_the_change_adds_or_alters_is_refused() -> None:
    old = with_models(MIT, NC)
    added = with_models(MIT, NC, NC | {"name": "nc2", "source": "org/other-nc"})
    denied, warned = judge(added, old)
    assert denied == ["org/other-nc is under CC-BY-NC-4.0, which policy default denies"]
    assert len(warned) == 1  # nc, unchanged
    # Altered: another source, another revision, another size: judged again.
    for change in ({"source": "org/nc-model-v2"}, {"revision": "abc"}, {"gpus": 2}):
        denied, _ = judge(with_models(MIT, NC | change), old)
        assert len(denied) == 1 and denied[0].startswith(change.get("source", "org/nc-model"))
    # A permitted model made denied by its declaration: refused.
    denied, _ = judge(with_models(MIT | {"license": "CC-BY-NC-4.0"}, NC), old)
    assert [d.split(" ")[0] for d in denied] == ["org/mit-model"]


def test_a_renamed_model_is_a_new_one() -> None:
    old = with_models(MIT, NC)
    denied, warned = judge(with_models(MIT, NC | {"name": "renamed"}), old)
    assert len(denied) == 1 and denied[0].startswith("org/nc-model") and warned == []


def test_an_adapter_added_to_a_model_is_judged_on_its_own() -> None:
    nc_lora = {"name": "nc-lora", "source": "org/nc-lora", "license": "CC-BY-NC-4.0"}
    mit_lora = {"name": "mit-lora", "source": "org/mit-lora", "license": "MIT"}
    old = with_models(NC | {"adapters": [mit_lora]})
    # The unchanged denied model and its unchanged adapter are not refused again; an adapter
    # added to it is, since it cannot be served on a base that is denied.
    denied, warned = judge(
        with_models(NC | {"adapters": [mit_lora, mit_lora | {"name": "b"}]}), old
    )
    assert denied == [
        "adapter b of model nc: not served, because its base model is not permitted "
        "(org/nc-model is under CC-BY-NC-4.0, which policy default denies)"
    ]
    assert [w.split(" ")[0] for w in warned] == ["'mit-lora'", "'nc'"]
    # A denied adapter added: refused, naming it.
    denied, _ = judge(with_models(NC | {"adapters": [mit_lora, nc_lora]}), old)
    assert [d.split(":")[0] for d in denied] == ["adapter nc-lora of model nc"]


def test_the_subject_of_a_model_holds_what_its_verdict_is_made_from() -> None:
    s = with_models(MIT | {"adapters": [{"name": "a", "source": "org/a", "license": "MIT"}]})
    subjects = judged_subjects(s)
    assert set(subjects) >= {"mit", "a"}
    for field, value in (("source", "org/x"), ("revision", "r"), ("license", "Apache-2.0"),
                         ("extraArgs", ["--enforce-eager"])):  # fmt: skip
        changed = with_models(MIT | {field: value, "adapters": s.spec.models[0].adapters})
        assert judged_subjects(changed)["mit"] != subjects["mit"], field
        assert judged_subjects(changed)["a"] == subjects["a"], field
    other_image = with_models(MIT, vllm={"image": "vllm/vllm-openai:v0.0.1"})
    assert judged_subjects(other_image)["mit"] != judged_subjects(with_models(MIT))["mit"]


def _model(i: int, lic: str, gpus: int) -> dict[str, Any]:
    return {"name": f"m{i}", "source": f"org/m{i}", "license": lic, "gpus": gpus}


LICENSES = st.sampled_from(["MIT", "CC-BY-NC-4.0", "Apache-2.0"])
MODEL = st.builds(_model, st.integers(0, 5), LICENSES, st.integers(1, 2))
MODELS = st.lists(MODEL, min_size=1, max_size=4, unique_by=lambda m: m["name"])


@settings(max_examples=150, deadline=None)
@given(old_models=MODELS, new_models=MODELS)
def test_an_update_refuses_exactly_the_denied_entries_it_adds_or_alters(
    old_models: list[dict[str, Any]], new_models: list[dict[str, Any]]
) -> None:
    old, new = with_models(*old_models), with_models(*new_models)
    verdicts = decide_stack(new, POLICY)
    denied, warned = update_verdicts(verdicts, new, old)
    before = {m["name"]: m for m in old_models}
    expected = sorted(
        verdicts[m["name"]].message
        for m in new_models
        if not verdicts[m["name"]].permitted and before.get(m["name"]) != m
    )
    assert sorted(denied) == expected
    # Re-applying the same object never refuses; a create refuses every denied entry.
    assert update_verdicts(verdicts, new, new)[0] == []
    assert len(update_verdicts(verdicts, new, None)[0]) == sum(
        not v.permitted for v in verdicts.values()
    )
    kept = [
        m for m in new_models if not verdicts[m["name"]].permitted and before.get(m["name"]) == m
    ]
    assert sum("is unchanged by this update" in w for w in warned) == len(kept)
