"""The shipped Cedar files: they validate against the schema, every rule has a unique @id,
and the policy set has a stable identity."""

from __future__ import annotations

import json
from importlib import resources

import cedarpy
import pytest

from policies import CompiledPolicySet, PolicyEngine, PolicySetInvalid
from policies.policy_set import shipped_sources

EXPECTED_RULES = {
    "residency.schedule.permit",
    "residency.schedule.region",
    "residency.schedule.classification",
    "residency.schedule.personal-info-transfer",
    "residency.export.region",
    "residency.export.classification",
    "residency.export.personal-info-transfer",
    "access.tenant-isolation",
    "access.auditor.read-only",
    "access.member.submit",
    "access.member.export",
    "access.oversight.audit",
    "access.admin.administer",
}


def test_shipped_policies_validate_against_the_schema() -> None:
    texts, schema = shipped_sources()
    assert set(texts) == {"access.cedar", "residency.cedar"}
    result = cedarpy.validate_policies("\n".join(texts.values()), schema)
    assert result.validation_passed, [str(e) for e in result.errors]


def test_each_file_validates_on_its_own() -> None:
    texts, schema = shipped_sources()
    for name, text in texts.items():
        result = cedarpy.validate_policies(text, schema)
        assert result.validation_passed, (name, [str(e) for e in result.errors])


def test_the_files_are_shipped_as_package_data() -> None:
    folder = resources.files("policies").joinpath("cedar")
    names = {entry.name for entry in folder.iterdir()}
    assert {"schema.json", "access.cedar", "residency.cedar"} <= names
    json.loads(folder.joinpath("schema.json").read_text())


def test_every_policy_has_a_unique_id_and_a_reason() -> None:
    compiled = CompiledPolicySet.shipped()
    ids = compiled.rule_ids()
    assert len(ids) == len(set(ids))
    assert set(ids) >= EXPECTED_RULES
    for rule in compiled.rules:
        assert not rule.rule_id.startswith("policy"), rule
        assert rule.reason != rule.rule_id, f"{rule.rule_id} has no @reason"


def test_a_policy_without_an_id_is_refused() -> None:
    texts, schema = shipped_sources()
    text = "\n".join(texts.values()) + "\npermit (principal, action, resource);\n"
    with pytest.raises(PolicySetInvalid, match="has no @id"):
        CompiledPolicySet.compile(text, schema)


def test_a_duplicate_id_is_refused() -> None:
    texts, schema = shipped_sources()
    text = texts["residency.cedar"] + (
        '\n@id("residency.schedule.region")\n'
        'forbid (principal, action == Nuri::Action::"schedule", resource);\n'
    )
    with pytest.raises(PolicySetInvalid, match="more than one policy"):
        CompiledPolicySet.compile(text, schema)


def test_a_policy_that_does_not_typecheck_is_refused_naming_its_id() -> None:
    _, schema = shipped_sources()
    text = (
        '@id("broken.unknown-attribute")\n'
        'forbid (principal, action == Nuri::Action::"schedule", resource)\n'
        "when { resource.owner_region == principal.region };\n"
    )
    with pytest.raises(PolicySetInvalid) as raised:
        CompiledPolicySet.compile(text, schema)
    assert any("broken.unknown-attribute" in p for p in raised.value.problems)


def test_a_schema_that_does_not_parse_is_refused() -> None:
    texts, _ = shipped_sources()
    with pytest.raises(PolicySetInvalid, match="schema"):
        CompiledPolicySet.compile(texts["residency.cedar"], '{"Nuri": {"entityTypes": 3}}')


def test_hash_ignores_layout_and_comments_but_not_meaning() -> None:
    texts, schema = shipped_sources()
    text = "\n".join(texts.values())
    base = CompiledPolicySet.compile(text, schema)
    relaid = CompiledPolicySet.compile("// a comment\n" + text.replace("\n", "\n\n"), schema)
    assert relaid.policy_set_hash == base.policy_set_hash
    changed = CompiledPolicySet.compile(
        text.replace(
            "resource.classification > principal.max_classification",
            "resource.classification >= principal.max_classification",
        ),
        schema,
    )
    assert changed.policy_set_hash != base.policy_set_hash
    assert len(base.policy_set_hash) == 64


def test_version_is_release_plus_hash_prefix() -> None:
    engine = PolicyEngine.shipped()
    release, digest = engine.version.split("+")
    assert release == "1"
    assert engine.policy_set_hash.startswith(digest)
    assert len(digest) == 12
    texts, schema = shipped_sources()
    custom = PolicyEngine.from_text("\n".join(texts.values()), schema, release="7")
    assert custom.version == f"7+{digest}"


def test_rules_are_partitioned_by_action_scope() -> None:
    compiled = CompiledPolicySet.shipped()
    schedule = compiled.for_action("schedule")
    assert schedule is not None
    assert len(schedule) == 4  # the permit and the three residency forbids
    assert compiled.for_action("no-such-action") is None
    assert compiled.permits_for("schedule") == ("residency.schedule.permit",)
