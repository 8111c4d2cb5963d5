"""Table-driven tests of each residency rule: placement on pools and export to destinations.
Each denial must name exactly the rules that decided it."""

from __future__ import annotations

import pytest
from policy_builders import KR_REGIONS, dataset, labels, model, pool

from policies import (
    NO_INPUTS_ID,
    Classification,
    Labels,
    PolicyEngine,
    PoolFacts,
    effective_label,
)
from policies import allowed_pools as shipped_allowed_pools
from policies import export as shipped_export
from policies import placement as shipped_placement

SEOUL = pool("seoul-h200", "kr-seoul", "KR", Classification.CLASSIFIED)
SEOUL_OPEN = pool("seoul-open", "kr-seoul", "KR", Classification.OPEN)
SEOUL_SENSITIVE = pool("seoul-sens", "kr-seoul", "KR", Classification.SENSITIVE)
BUSAN = pool("busan-h100", "kr-busan", "KR", Classification.CLASSIFIED)
TOKYO = pool("tokyo-h100", "jp-tokyo", "JP", Classification.CLASSIFIED)
VIRGINIA = pool("us-h100", "us-east-1", "US", Classification.SENSITIVE)

PLACEMENT_TABLE = [
    # (case, labels, pool, expected denying rule ids; () = allowed)
    ("region allowed", labels(), SEOUL, ()),
    ("region not allowed", labels(), BUSAN, ("residency.schedule.region",)),
    ("empty allowed regions", labels(regions=()), SEOUL, ("residency.schedule.region",)),
    ("open on open pool", labels(), SEOUL_OPEN, ()),
    (
        "sensitive on open pool",
        labels(classification="sensitive"),
        SEOUL_OPEN,
        ("residency.schedule.classification",),
    ),
    ("sensitive on sensitive pool", labels(classification="sensitive"), SEOUL_SENSITIVE, ()),
    (
        "classified on sensitive pool",
        labels(classification="classified"),
        SEOUL_SENSITIVE,
        ("residency.schedule.classification",),
    ),
    ("classified on classified pool", labels(classification="classified"), SEOUL, ()),
    ("personal info at home", labels(personal_info=True), SEOUL, ()),
    (
        "personal info abroad without basis",
        labels("KR", {"kr-seoul", "jp-tokyo"}, personal_info=True),
        TOKYO,
        ("residency.schedule.personal-info-transfer",),
    ),
    (
        "personal info abroad with basis",
        labels("KR", {"kr-seoul", "jp-tokyo"}, personal_info=True, transfer_basis="PIPA 28-8"),
        TOKYO,
        (),
    ),
    (
        "no personal info abroad",
        labels("KR", {"kr-seoul", "jp-tokyo"}),
        TOKYO,
        (),
    ),
    (
        "every rule at once",
        labels(classification="classified", personal_info=True),
        VIRGINIA,
        (
            "residency.schedule.region",
            "residency.schedule.classification",
            "residency.schedule.personal-info-transfer",
        ),
    ),
]


@pytest.mark.parametrize(
    ("case", "label", "target", "denied_by"), PLACEMENT_TABLE, ids=[c[0] for c in PLACEMENT_TABLE]
)
def test_placement_rules(
    engine: PolicyEngine,
    case: str,
    label: Labels,
    target: PoolFacts,
    denied_by: tuple[str, ...],
) -> None:
    decision = engine.placement([dataset("ds-1", label)], target)
    assert decision.allowed is (not denied_by), decision
    assert decision.errors == ()
    assert decision.policy_set_hash == engine.policy_set_hash
    if denied_by:
        assert decision.policy_ids == denied_by
        assert len(decision.reasons) == len(denied_by)
        for rule_id, reason in zip(denied_by, decision.reasons, strict=True):
            assert reason.startswith(f"{rule_id}: ")
            assert "dataset ds-1" in reason
            assert "{" not in reason, "every placeholder is filled in"
    else:
        assert decision.policy_ids == ("residency.schedule.permit",)


def test_every_input_must_be_allowed_and_denials_name_the_input(engine: PolicyEngine) -> None:
    teacher = model("ax-k1", labels(regions={"kr-seoul", "kr-busan"}))
    data = dataset("ds-kr", labels(classification="sensitive"))
    decisions = engine.allowed_pools([teacher, data], [SEOUL, SEOUL_OPEN, BUSAN])
    assert decisions["seoul-h200"].allowed
    assert len(decisions["seoul-h200"].reasons) == 2  # one permit line per input
    assert decisions["seoul-open"].policy_ids == ("residency.schedule.classification",)
    assert "dataset ds-kr" in decisions["seoul-open"].reasons[0]
    assert decisions["busan-h100"].policy_ids == ("residency.schedule.region",)
    assert "dataset ds-kr" in decisions["busan-h100"].reasons[0]
    assert not any("ax-k1" in r for r in decisions["busan-h100"].reasons)


def test_highest_classification_among_inputs_decides(engine: PolicyEngine) -> None:
    inputs = [labels(), labels(classification="sensitive"), labels(classification="classified")]
    assert not engine.placement(inputs, SEOUL_SENSITIVE).allowed
    assert engine.placement(inputs[:2], SEOUL_SENSITIVE).allowed
    assert engine.placement(inputs, SEOUL).allowed


def test_unnamed_inputs_are_numbered(engine: PolicyEngine) -> None:
    decision = engine.placement([labels(), labels(regions={"kr-busan"})], SEOUL)
    assert decision.reasons[0].startswith("residency.schedule.region: ")
    assert "input 2" in decision.reasons[0]


def test_a_job_without_inputs_is_placed_nowhere(engine: PolicyEngine) -> None:
    decision = engine.placement([], SEOUL)
    assert not decision.allowed
    assert decision.policy_ids == (NO_INPUTS_ID,)


def test_allowed_pools_for_many_jobs(engine: PolicyEngine) -> None:
    jobs = {
        "j-open": [labels(regions={"kr-seoul", "kr-busan", "jp-tokyo"})],
        "j-pi": [labels(personal_info=True, regions={"kr-seoul", "jp-tokyo"})],
        "j-none": [],
    }
    result = engine.allowed_pools_for_jobs(jobs, [SEOUL, BUSAN, TOKYO])
    allowed = {job: sorted(p for p, d in per.items() if d.allowed) for job, per in result.items()}
    assert allowed == {
        "j-open": ["busan-h100", "seoul-h200", "tokyo-h100"],
        "j-pi": ["seoul-h200"],
        "j-none": [],
    }


EXPORT_TABLE = [
    # (case, labels, region, jurisdiction, clearance, denying rules)
    ("home region", labels(), "kr-seoul", "KR", Classification.SENSITIVE, ()),
    (
        "other region",
        labels(),
        "us-east-1",
        "US",
        Classification.SENSITIVE,
        ("residency.export.region",),
    ),
    (
        "classified to default clearance",
        labels(classification="classified"),
        "kr-seoul",
        "KR",
        Classification.SENSITIVE,
        ("residency.export.classification",),
    ),
    (
        "classified to cleared destination",
        labels(classification="classified"),
        "kr-seoul",
        "KR",
        Classification.CLASSIFIED,
        (),
    ),
    (
        "personal info abroad without basis",
        labels("KR", {"kr-seoul", "jp-tokyo"}, personal_info=True),
        "jp-tokyo",
        "JP",
        Classification.SENSITIVE,
        ("residency.export.personal-info-transfer",),
    ),
    (
        "personal info abroad with basis",
        labels("KR", {"kr-seoul", "jp-tokyo"}, personal_info=True, transfer_basis="consent"),
        "jp-tokyo",
        "JP",
        Classification.SENSITIVE,
        (),
    ),
]


@pytest.mark.parametrize(
    ("case", "label", "region", "country", "clearance", "denied_by"),
    EXPORT_TABLE,
    ids=[c[0] for c in EXPORT_TABLE],
)
def test_export_rules(
    engine: PolicyEngine,
    case: str,
    label: Labels,
    region: str,
    country: str,
    clearance: Classification,
    denied_by: tuple[str, ...],
) -> None:
    decision = engine.export(
        model("m-ft", label, member="m-kt"),
        region,
        country,
        destination_max_classification=clearance,
    )
    assert decision.allowed is (not denied_by), decision
    assert decision.policy_ids == denied_by
    if denied_by:
        assert all("model m-ft" in reason for reason in decision.reasons)
        assert all("{" not in reason for reason in decision.reasons)
    else:
        assert decision.reasons and "no residency rule forbids" in decision.reasons[0]


def test_export_of_bare_labels_and_default_clearance(engine: PolicyEngine) -> None:
    assert engine.export(labels(classification="sensitive"), "kr-seoul", "KR").allowed
    decision = engine.export(labels(), "eu-west", "IE")
    assert decision.policy_ids == ("residency.export.region",)
    assert "the dataset" in decision.reasons[0]


def test_distilled_student_of_a_kr_only_teacher_stays_in_korea(engine: PolicyEngine) -> None:
    teacher = labels("KR", KR_REGIONS, "sensitive")
    corpus = labels("US", {"kr-seoul", "us-east-1", "jp-tokyo"})
    student = effective_label([teacher, corpus])
    assert student.allowed_regions == {"kr-seoul"}
    decisions = engine.allowed_pools([student], [SEOUL, TOKYO, VIRGINIA])
    assert [name for name, d in decisions.items() if d.allowed] == ["seoul-h200"]
    assert decisions["tokyo-h100"].policy_ids == ("residency.schedule.region",)
    assert not engine.export(student, "us-east-1", "US").allowed
    assert not engine.export(student, "jp-tokyo", "JP").allowed
    assert engine.export(student, "kr-seoul", "KR").allowed


def test_module_level_functions_use_the_shipped_policies() -> None:
    assert shipped_placement([labels()], SEOUL).allowed
    assert not shipped_allowed_pools([labels()], [BUSAN])["busan-h100"].allowed
    assert shipped_export(labels(), "us-east-1", "US").policy_ids == ("residency.export.region",)


def test_decision_to_dict_is_json_ready(engine: PolicyEngine) -> None:
    decision = engine.placement([labels()], BUSAN)
    as_dict = decision.to_dict()
    assert as_dict == {
        "allowed": False,
        "policy_ids": ["residency.schedule.region"],
        "reasons": list(decision.reasons),
        "errors": [],
        "policy_set_hash": engine.policy_set_hash,
    }
