"""The Cedar policy set: shipped files, validation against the schema, identity and rules.

A ``CompiledPolicySet`` is the parsed, validated policy text plus its schema. It knows every
rule by its ``@id`` (each policy must have a unique one), the human-readable ``@reason`` of
each rule, and which rules can apply to which action, so that each request is evaluated
against only the rules whose action scope can match it (a rule outside a request's action
scope can neither fire nor fail, so the decision is the same as with the whole set).

Its identity is ``policy_set_hash``: SHA-256 over the canonical JSON form of the policies
(independent of comments and layout) and of the schema. ``version`` is the declared release
plus the first twelve hex digits of that hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import cedarpy

# Bumped when the shipped policies change meaning; the hash changes with any change at all.
SHIPPED_RELEASE = "1"
CEDAR_FOLDER = "cedar"
SCHEMA_FILE = "schema.json"
NAMESPACE = "Nuri"


class PolicySetInvalid(ValueError):
    """Policy text or schema that cannot be parsed, lacks ``@id``s, or fails validation."""

    code = "policy_set_invalid"

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message + ("".join(f"\n  - {p}" for p in problems)))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy: its ``@id``, Cedar's positional id, effect and ``@reason`` text."""

    rule_id: str
    cedar_id: str
    effect: str
    reason: str
    actions: frozenset[str] | None  # None: any action


def shipped_sources() -> tuple[dict[str, str], str]:
    """The shipped policy files (name → text, in name order) and the schema text."""
    folder = resources.files("policies").joinpath(CEDAR_FOLDER)
    texts = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".cedar")
    }
    return texts, folder.joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def _action_scope(scope: Mapping[str, Any]) -> frozenset[str] | None:
    """The action ids a policy's action scope can match; None when it may match any."""
    op = scope.get("op")
    if op == "==":
        return frozenset({str(scope["entity"]["id"])})
    if op == "in" and "entities" in scope:
        return frozenset(str(e["id"]) for e in scope["entities"])
    # "All", or membership in an action group: keep the rule for every action (always sound).
    return None


@dataclass(frozen=True)
class CompiledPolicySet:
    """Validated Cedar policies with their schema, rules by id, and per-action partitions."""

    policy_text: str
    schema_text: str
    version: str
    policy_set_hash: str
    rules: tuple[Rule, ...]
    schema: cedarpy.Schema = field(repr=False)
    _partitions: dict[str, cedarpy.PolicySet] = field(repr=False)
    _by_cedar_id: dict[str, Rule] = field(repr=False)

    @classmethod
    def compile(
        cls, policy_text: str, schema_text: str, release: str = SHIPPED_RELEASE
    ) -> CompiledPolicySet:
        """Parse, check ``@id``s and validate ``policy_text`` against ``schema_text``.

        Raises ``PolicySetInvalid`` listing every problem found.
        """
        try:
            schema_json = json.loads(schema_text)
            schema = cedarpy.Schema.from_json_str(schema_text)
        except ValueError as err:
            raise PolicySetInvalid(f"the Cedar schema does not parse: {err}") from None
        try:
            est = json.loads(cedarpy.policies_to_json_str(policy_text))
        except ValueError as err:
            raise PolicySetInvalid(f"the Cedar policies do not parse: {err}") from None
        if est.get("templates"):
            raise PolicySetInvalid("policy templates are not supported here")
        rules, problems = _rules_from_est(est["staticPolicies"])
        result = cedarpy.validate_policies(policy_text, schema)
        problems += [_error_with_rule_id(str(e), rules) for e in result.errors]
        if problems:
            raise PolicySetInvalid("the Cedar policies are not valid", tuple(problems))
        digest = policy_set_digest(est, schema_json)
        by_cedar_id = {rule.cedar_id: rule for rule in rules}
        actions = _schema_actions(schema_json)
        partitions = {action: _partition(est, rules, action) for action in actions}
        return cls(
            policy_text=policy_text,
            schema_text=schema_text,
            version=f"{release}+{digest[:12]}",
            policy_set_hash=digest,
            rules=rules,
            schema=schema,
            _partitions=partitions,
            _by_cedar_id=by_cedar_id,
        )

    @classmethod
    def shipped(cls) -> CompiledPolicySet:
        """The policy files and schema shipped in ``policies/cedar``."""
        texts, schema_text = shipped_sources()
        return cls.compile("\n".join(texts.values()), schema_text, SHIPPED_RELEASE)

    def for_action(self, action: str) -> cedarpy.PolicySet | None:
        """The policies that can apply to ``action``; None for an action the schema lacks."""
        return self._partitions.get(action)

    def rule(self, cedar_id: str) -> Rule | None:
        """The rule Cedar calls ``cedar_id`` (``policy3``)."""
        return self._by_cedar_id.get(cedar_id)

    def permits_for(self, action: str) -> tuple[str, ...]:
        """The ids of the permit rules that could allow ``action``."""
        return tuple(
            r.rule_id
            for r in self.rules
            if r.effect == "permit" and (r.actions is None or action in r.actions)
        )

    def rule_ids(self) -> tuple[str, ...]:
        """Every rule id, in policy-text order."""
        return tuple(r.rule_id for r in self.rules)

    def name_rules(self, message: str) -> str:
        """``message`` with Cedar's positional ids (``policy3``) replaced by rule ids."""
        for cedar_id in sorted(self._by_cedar_id, key=len, reverse=True):
            message = message.replace(f"`{cedar_id}`", f"`{self._by_cedar_id[cedar_id].rule_id}`")
        return message


def policy_set_digest(est: Mapping[str, Any], schema_json: Any) -> str:
    """SHA-256 over the canonical JSON of the policies (EST form) and of the schema."""
    canonical = json.dumps(
        {"policies": est, "schema": schema_json},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _rules_from_est(static: Mapping[str, Any]) -> tuple[tuple[Rule, ...], list[str]]:
    rules: list[Rule] = []
    problems: list[str] = []
    seen: set[str] = set()
    for cedar_id in sorted(static, key=_positional_order):
        policy = static[cedar_id]
        annotations = policy.get("annotations") or {}
        rule_id = annotations.get("id")
        if not rule_id:
            problems.append(f'policy {cedar_id} ({policy["effect"]}) has no @id("...")')
            rule_id = cedar_id
        elif rule_id in seen:
            problems.append(f"@id({rule_id!r}) is used by more than one policy")
        seen.add(rule_id)
        rules.append(
            Rule(
                rule_id=rule_id,
                cedar_id=cedar_id,
                effect=policy["effect"],
                reason=annotations.get("reason") or rule_id,
                actions=_action_scope(policy["action"]),
            )
        )
    return tuple(rules), problems


def _positional_order(cedar_id: str) -> tuple[int, str]:
    digits = cedar_id.removeprefix("policy")
    return (int(digits), cedar_id) if digits.isdigit() else (1 << 30, cedar_id)


def _schema_actions(schema_json: Mapping[str, Any]) -> tuple[str, ...]:
    namespace = schema_json.get(NAMESPACE, {})
    return tuple(sorted(namespace.get("actions", {})))


def _partition(est: Mapping[str, Any], rules: tuple[Rule, ...], action: str) -> cedarpy.PolicySet:
    static = est["staticPolicies"]
    chosen = {
        r.cedar_id: static[r.cedar_id] for r in rules if r.actions is None or action in r.actions
    }
    # Cedar's positional ids are kept, so errors and reasons map back to the same rules.
    text = json.dumps({"staticPolicies": chosen, "templates": {}, "templateLinks": []})
    return cedarpy.PolicySet.from_json_str(text)


def _error_with_rule_id(message: str, rules: tuple[Rule, ...]) -> str:
    for rule in rules:
        message = message.replace(f"[{rule.cedar_id}]", f"[{rule.rule_id}]")
    return message
