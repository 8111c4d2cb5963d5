"""An evaluation error is a denial, and the error is surfaced with the rule that failed."""

from __future__ import annotations

from policy_builders import labels, pool

from policies import EVALUATION_ERROR_ID, PolicyEngine
from policies.cedar_requests import Site, input_entity, schedule_request, site_entity
from policies.facts import ArtifactKind
from policies.policy_set import shipped_sources


def _schedule(
    label_attrs: dict[str, object],
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    site = Site.of(pool())
    entity = input_entity(ArtifactKind.DATASET, labels())
    entity["attrs"] = label_attrs
    request = schedule_request(site, ArtifactKind.DATASET, entity["uid"]["id"])
    return [request], [site_entity(site), entity]


def test_a_malformed_entity_is_a_denial(engine: PolicyEngine) -> None:
    # No allowed_regions: the schema refuses the entity, Cedar cannot decide.
    requests, entities = _schedule(
        {"jurisdiction": "KR", "classification": 0, "personal_info": False}
    )
    [decision] = engine.evaluate("schedule", requests, entities)
    assert not decision.allowed
    assert decision.policy_ids == (EVALUATION_ERROR_ID,)
    assert any("allowed_regions" in e for e in decision.errors)
    assert decision.reasons[0].startswith("evaluation error (an error is a denial)")


def test_entities_that_are_not_json_are_a_denial(engine: PolicyEngine) -> None:
    requests, _ = _schedule({})
    [decision] = engine.evaluate("schedule", requests, "[{not json")
    assert not decision.allowed
    assert decision.errors


def test_an_unknown_action_is_a_denial(engine: PolicyEngine) -> None:
    requests, entities = _schedule({})
    [decision] = engine.evaluate("launch-missiles", requests, entities)
    assert not decision.allowed
    assert "no action" in decision.errors[0]


def test_a_forbid_that_fails_denies_even_though_cedar_would_allow() -> None:
    # Cedar skips a policy that errors; here the only forbid errors on Long overflow, so
    # Cedar alone would answer Allow. The engine must deny and name the failing rule.
    policies, schema = shipped_sources()
    overflow = (
        '\n@id("test.overflowing-forbid")\n@reason("never fires")\n'
        'forbid (principal is Nuri::Pool, action == Nuri::Action::"schedule", resource)\n'
        "when { resource.classification + 9223372036854775807 < 0 };\n"
    )
    engine = PolicyEngine.from_text(policies["residency.cedar"] + overflow, schema)
    decision = engine.placement([labels(classification="sensitive")], pool())
    assert not decision.allowed
    assert "test.overflowing-forbid" in decision.policy_ids
    assert any("overflow" in e for e in decision.errors)
    assert any("test.overflowing-forbid" in e for e in decision.errors)
    assert any("an error is a denial" in r for r in decision.reasons)
    # Open data does not overflow (0 + max is fine): the same engine allows it.
    assert engine.placement([labels(classification="open")], pool()).allowed


def test_an_entity_missing_attributes_the_rules_read_is_a_denial() -> None:
    # A hand-built input that lacks classification and personal_info: the rules that read them
    # cannot be evaluated, so nothing may be allowed.
    policies, schema = shipped_sources()
    engine = PolicyEngine.from_text(policies["residency.cedar"], schema)
    site = Site.of(pool("tokyo", "jp-tokyo", "JP"))
    entity = input_entity(ArtifactKind.DATASET, labels())
    entity["attrs"] = {"jurisdiction": "KR", "allowed_regions": ["jp-tokyo"]}
    request = schedule_request(site, ArtifactKind.DATASET, entity["uid"]["id"])
    [decision] = engine.evaluate("schedule", [request], [site_entity(site), entity])
    assert not decision.allowed
    assert decision.errors


def test_errors_are_not_cached() -> None:
    policies, schema = shipped_sources()
    overflow = (
        '\n@id("test.overflowing-forbid")\n'
        'forbid (principal is Nuri::Pool, action == Nuri::Action::"schedule", resource)\n'
        "when { resource.classification + 9223372036854775807 > 0 };\n"
    )
    engine = PolicyEngine.from_text(policies["residency.cedar"] + overflow, schema)
    engine.placement([labels(classification="classified")], pool())
    assert len(engine.cache) == 0
