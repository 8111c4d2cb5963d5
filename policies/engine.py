"""The policy engine: residency placement and export, and access, decided by Cedar.

``PolicyEngine`` evaluates requests built from facts against a ``CompiledPolicySet``,
batching them through ``cedarpy.is_authorized_batch`` and caching each verdict by
(policy-set hash, the facts it was made from) in a bounded LRU. A cached verdict is the same
verdict: Cedar sees nothing but those facts (see ``policies.cedar_requests``).

Failure is closed: a request Cedar cannot evaluate, or any policy that fails while it is
evaluated (even one Cedar would skip), makes the decision a denial that names the failure.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cedarpy

from policies import cedar_requests as cr
from policies.decision import Decision, DecisionCache, Verdict, combine
from policies.facts import (
    AccessResource,
    Action,
    ArtifactFacts,
    ArtifactKind,
    Caller,
    Destination,
    PoolFacts,
)
from policies.labels import Classification, Labels
from policies.policy_set import CompiledPolicySet

# Engine-level ids, used where no Cedar rule can be named. They start with "nuri.".
EVALUATION_ERROR_ID = "nuri.evaluation-error"
NO_INPUTS_ID = "nuri.no-inputs"

Input = Labels | ArtifactFacts
_FAILED_POLICY = re.compile(r"policy `([^`]+)`")
_PLACEHOLDER = re.compile(r"\{([a-z_.]+)\}")
# A reason text as a format string and the placeholder names that fill it, in order.
_Template = tuple[str, tuple[str, ...]]
# (allowed, policy ids, reason templates, errors): a verdict's meaning before names are known.
_Shape = tuple[bool, tuple[str, ...], tuple[_Template, ...], tuple[str, ...]]
# Distinct error-free verdicts are few (combinations of fired rules); this bounds them anyway.
_MAX_SHAPES = 4096


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """One access question: may ``caller`` do ``action`` to ``resource``?

    ``destination`` is needed for ``Action.EXPORT`` (and ignored otherwise).
    """

    caller: Caller
    action: Action
    resource: AccessResource
    destination: Destination | None = None


@dataclass(frozen=True, slots=True)
class _NamedInput:
    name: str
    kind: ArtifactKind
    labels: Labels
    words: dict[str, str] = field(compare=False, hash=False)


class PolicyEngine:
    """Decides residency and access questions with one compiled Cedar policy set.

    Thread-safe: the compiled policies are immutable and the cache takes a lock.
    """

    def __init__(self, policy_set: CompiledPolicySet, cache: DecisionCache | None = None) -> None:
        self.policy_set = policy_set
        self.cache = cache if cache is not None else DecisionCache()
        # Cedar requests evaluated so far (a statistic; not locked, so approximate under threads).
        self.cedar_requests = 0
        # Written without a lock: a race only computes the same shape twice.
        self._shapes: dict[tuple[Verdict, str], _Shape] = {}

    @classmethod
    def shipped(cls, cache_size: int = 65_536) -> PolicyEngine:
        """An engine over the policies and schema shipped in ``policies/cedar``."""
        return cls(CompiledPolicySet.shipped(), DecisionCache(cache_size))

    @classmethod
    def from_text(
        cls, policies: str, schema: str, release: str = "custom", cache_size: int = 65_536
    ) -> PolicyEngine:
        """An engine over the given Cedar text and JSON schema (validated; see
        ``CompiledPolicySet.compile``), e.g. a policy version an admin stored."""
        return cls(CompiledPolicySet.compile(policies, schema, release), DecisionCache(cache_size))

    @property
    def policy_set_hash(self) -> str:
        """SHA-256 of the canonical policies and schema."""
        return self.policy_set.policy_set_hash

    @property
    def version(self) -> str:
        """``<release>+<first 12 hex digits of the hash>``."""
        return self.policy_set.version

    # --- residency: placement ------------------------------------------------------------

    def placement(self, inputs: Sequence[Input], pool: PoolFacts) -> Decision:
        """May a job with these inputs (the base or teacher model included) run on ``pool``?

        Allowed only if every input may be processed there; a denial names each rule that
        forbids it, per input.
        """
        return self.allowed_pools(inputs, (pool,))[pool.name]

    def allowed_pools(
        self, inputs: Sequence[Input], pools: Iterable[PoolFacts]
    ) -> dict[str, Decision]:
        """Where may a job with these inputs run, and why: a decision per pool name."""
        return self.allowed_pools_for_jobs({"job": inputs}, pools)["job"]

    def allowed_pools_for_jobs(
        self, jobs: Mapping[str, Sequence[Input]], pools: Iterable[PoolFacts]
    ) -> dict[str, dict[str, Decision]]:
        """``allowed_pools`` for many jobs at once (one Cedar batch for what is not cached).

        Returns ``{job: {pool name: Decision}}``. A job with no inputs is denied everywhere
        (``nuri.no-inputs``): every job has at least its base model as an input.
        """
        pool_list = tuple(pools)
        sites = [(pool, cr.Site.of(pool), cr.pool_words(pool)) for pool in pool_list]
        seen: dict[tuple[Input, int], _NamedInput] = {}
        named = {job: _named_inputs(inputs, seen) for job, inputs in jobs.items()}
        pairs = {
            (item.kind, item.labels, site)
            for items in named.values()
            for item in items
            for _, site, _ in sites
        }
        verdicts = self._schedule_verdicts(pairs)
        shapes = {pair: self._shape_of(verdict, "schedule") for pair, verdict in verdicts.items()}
        # Jobs share inputs (the base model, popular datasets): explain each (input, pool) once.
        explained: dict[tuple[_NamedInput, int], Decision] = {}
        result: dict[str, dict[str, Decision]] = {}
        for job, items in named.items():
            per_pool: dict[str, Decision] = {}
            for index, (pool, site, words) in enumerate(sites):
                if not items:
                    per_pool[pool.name] = self._no_inputs()
                    continue
                parts = []
                for item in items:
                    part = explained.get((item, index))
                    if part is None:
                        part = self._fill_shape(
                            shapes[(item.kind, item.labels, site)], {**words, **item.words}
                        )
                        explained[(item, index)] = part
                    parts.append(part)
                per_pool[pool.name] = combine(parts, self.policy_set_hash)
            result[job] = per_pool
        return result

    def _schedule_verdicts(
        self, pairs: Iterable[tuple[ArtifactKind, Labels, cr.Site]]
    ) -> dict[tuple[ArtifactKind, Labels, cr.Site], Verdict]:
        found: dict[tuple[ArtifactKind, Labels, cr.Site], Verdict] = {}
        missing: list[tuple[ArtifactKind, Labels, cr.Site]] = []
        for pair in pairs:
            cached = self.cache.get(self._key("schedule", pair))
            if cached is None:
                missing.append(pair)
            else:
                found[pair] = cached
        if not missing:
            return found
        entities: dict[tuple[str, str], cr.Entity] = {}
        requests = []
        input_ids: dict[tuple[ArtifactKind, Labels], str] = {}
        for kind, labels, site in missing:
            input_id = input_ids.get((kind, labels))
            if input_id is None:
                input_id = input_ids[(kind, labels)] = cr.labels_id(kind, labels)
                entities[(kind.value, input_id)] = cr.input_entity(kind, labels, input_id)
            if ("pool", site.cedar_id) not in entities:
                entities[("pool", site.cedar_id)] = cr.site_entity(site)
            requests.append(cr.schedule_request(site, kind, input_id))
        verdicts = self._evaluate("schedule", requests, list(entities.values()))
        for pair, verdict in zip(missing, verdicts, strict=True):
            found[pair] = verdict
            if not verdict.errors:
                self.cache.put(self._key("schedule", pair), verdict)
        return found

    # --- residency and access: export -----------------------------------------------------

    def export(
        self,
        artifact: Input,
        destination_region: str,
        destination_jurisdiction: str,
        *,
        destination_max_classification: Classification = Classification.SENSITIVE,
        caller: Caller | None = None,
    ) -> Decision:
        """May the artifact be exported to ``destination_region`` (in that jurisdiction)?

        The residency rules for schedule apply to the destination: the region must be among
        the artifact's allowed regions, its classification within the destination's clearance
        (``SENSITIVE`` unless asserted otherwise), and personal information needs a transfer
        basis to leave its jurisdiction. With a ``caller`` the access rules apply too (only
        the owning member's users export); without one only residency is judged.
        """
        owned = artifact if isinstance(artifact, ArtifactFacts) else ArtifactFacts("", artifact)
        destination = Destination(
            destination_region, destination_jurisdiction, destination_max_classification
        )
        if caller is None:
            stand_in, stand_in_artifact = cr.residency_owner(owned)
            [verdict] = self._access_verdicts(
                [AccessRequest(stand_in, Action.EXPORT, stand_in_artifact, destination)]
            )
            name = cr.describe_artifact(owned.kind, owned.ref or None)
            words = {
                **cr.label_words("artifact", name, owned.labels),
                **cr.destination_words(destination),
            }
            if verdict.allowed:
                # The stand-in owner's permit is not the point: say that residency allows it.
                return Decision(
                    True,
                    (),
                    (
                        f"no residency rule forbids exporting {name} to {destination.region} "
                        f"({destination.jurisdiction})",
                    ),
                    (),
                    self.policy_set_hash,
                )
            return self._decide(verdict, Action.EXPORT.value, words)
        return self.authorize(caller, Action.EXPORT, owned, destination=destination)

    # --- access -------------------------------------------------------------------------

    def authorize(
        self,
        caller: Caller,
        action: Action,
        resource: AccessResource,
        *,
        destination: Destination | None = None,
    ) -> Decision:
        """May ``caller`` do ``action`` to ``resource``? (``destination`` for exports.)"""
        return self.authorize_batch([AccessRequest(caller, action, resource, destination)])[0]

    def authorize_batch(self, requests: Sequence[AccessRequest]) -> list[Decision]:
        """``authorize`` for many requests, in order (one Cedar batch per action)."""
        verdicts = self._access_verdicts(requests)
        decisions = []
        for request, verdict in zip(requests, verdicts, strict=True):
            words = cr.access_words(request.caller, request.resource)
            if request.destination is not None:
                words.update(cr.destination_words(request.destination))
            decisions.append(self._decide(verdict, request.action.value, words))
        return decisions

    def _access_verdicts(self, requests: Sequence[AccessRequest]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            if request.action is Action.EXPORT and request.destination is None:
                out[index] = _failure("an export needs a destination")
                continue
            cached = self.cache.get(self._key("access", request))
            if cached is None:
                pending.setdefault(request.action.value, []).append(index)
            else:
                out[index] = cached
        for action, indexes in pending.items():
            for batch in _without_conflicts(requests, indexes):
                entities: dict[tuple[str, str], cr.Entity] = {}
                cedar_requests = []
                for index, uids, needed in batch:
                    entities.update(((e["uid"]["type"], e["uid"]["id"]), e) for e in needed)
                    cedar_request = {**uids, "action": cr.action_uid(action)}
                    destination = requests[index].destination
                    if requests[index].action is Action.EXPORT and destination is not None:
                        cedar_request["context"] = cr.destination_context(destination)
                    cedar_requests.append(cedar_request)
                verdicts = self._evaluate(action, cedar_requests, list(entities.values()))
                for (index, _, _), verdict in zip(batch, verdicts, strict=True):
                    out[index] = verdict
                    if not verdict.errors:
                        self.cache.put(self._key("access", requests[index]), verdict)
        return [v if v is not None else _failure("not evaluated") for v in out]

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(
        self,
        action: str,
        requests: Sequence[cr.Request],
        entities: Sequence[cr.Entity] | str,
        words: Mapping[str, str] | None = None,
    ) -> list[Decision]:
        """Evaluate raw Cedar requests (all for ``action``) against raw entities, uncached.

        The building block of everything above, public for tests and diagnostics: malformed
        entities or requests give denials that carry the error.
        """
        verdicts = self._evaluate(action, list(requests), entities)
        return [self._decide(v, action, words or {}) for v in verdicts]

    def _evaluate(
        self, action: str, requests: list[cr.Request], entities: Sequence[cr.Entity] | str
    ) -> list[Verdict]:
        if not requests:
            return []
        policies = self.policy_set.for_action(action)
        if policies is None:
            return [_failure(f"the schema has no action {action!r}")] * len(requests)
        self.cedar_requests += len(requests)
        entity_json = entities if isinstance(entities, str) else json.dumps(list(entities))
        try:
            results = cedarpy.is_authorized_batch(
                requests, policies, entity_json, self.policy_set.schema
            )
        except Exception as err:  # any failure to evaluate is a denial
            return [_failure(f"the request could not be evaluated: {err}")] * len(requests)
        return [self._verdict(result) for result in results]

    def _verdict(self, result: cedarpy.AuthzResult) -> Verdict:
        diagnostics = result.diagnostics
        errors = tuple(sorted(str(e) for e in diagnostics.errors))
        failed = tuple(
            sorted({m for e in errors for m in _FAILED_POLICY.findall(e)}, key=_positional)
        )
        permitted = result.decision is cedarpy.Decision.Allow
        return Verdict(
            allowed=permitted and not errors,
            fired=tuple(sorted(diagnostics.reasons, key=_positional)),
            failed=failed,
            errors=errors,
            permitted=permitted,
        )

    def _decide(self, verdict: Verdict, action: str, words: Mapping[str, str]) -> Decision:
        return self._fill_shape(self._shape_of(verdict, action), words)

    def _fill_shape(self, shape: _Shape, words: Mapping[str, str]) -> Decision:
        allowed, ids, lines, errors = shape
        reasons = tuple([_fill(line, words) for line in lines])
        return Decision(allowed, ids, reasons, errors, self.policy_set_hash)

    def _shape_of(self, verdict: Verdict, action: str) -> _Shape:
        shape = self._shapes.get((verdict, action))
        if shape is None:
            shape = self._shape(verdict, action)
            if not verdict.errors and len(self._shapes) < _MAX_SHAPES:
                self._shapes[(verdict, action)] = shape
        return shape

    def _shape(self, verdict: Verdict, action: str) -> _Shape:
        """What a verdict means, with reasons still to be filled in with names."""
        rules = self.policy_set
        fired = [r for r in (rules.rule(c) for c in verdict.fired) if r is not None]
        if verdict.allowed:
            return (
                True,
                tuple(r.rule_id for r in fired),
                tuple(_compile_template(f"{r.rule_id}: {r.reason}") for r in fired),
                (),
            )
        ids: dict[str, None] = {}
        lines: list[_Template] = []
        forbids = [r for r in fired if r.effect == "forbid"]
        for rule in forbids:
            ids[rule.rule_id] = None
            lines.append(_compile_template(f"{rule.rule_id}: {rule.reason}"))
        cedar_could_not_answer = bool(verdict.errors) and not verdict.failed
        if not forbids and not verdict.permitted and not cedar_could_not_answer:
            permits = rules.permits_for(action)
            ids.update(dict.fromkeys(permits))
            if permits:
                line = f"no permit matched: {action} is allowed only by {', '.join(permits)}"
            else:
                line = f"no permit matched: no rule permits {action}"
            lines.append(_literal(line))
        failed_ids = [r.rule_id for r in (rules.rule(c) for c in verdict.failed) if r is not None]
        errors = tuple(rules.name_rules(e) for e in verdict.errors)
        if errors and not failed_ids:
            failed_ids = [EVALUATION_ERROR_ID]
        ids.update(dict.fromkeys(failed_ids))
        lines.extend(_literal(f"evaluation error (an error is a denial): {e}") for e in errors)
        return (False, tuple(ids), tuple(lines), errors)

    def _no_inputs(self) -> Decision:
        return Decision(
            False,
            (NO_INPUTS_ID,),
            (f"{NO_INPUTS_ID}: no inputs were given; every job has at least its base model",),
            (),
            self.policy_set_hash,
        )

    def _key(self, kind: str, facts: Hashable) -> Hashable:
        return (self.policy_set_hash, kind, facts)


def _named_inputs(
    inputs: Sequence[Input], seen: dict[tuple[Input, int], _NamedInput] | None = None
) -> list[_NamedInput]:
    """Inputs with the names and words that explain them; ``seen`` memoises across jobs."""
    named = []
    for position, item in enumerate(inputs, start=1):
        # A bare label is named by its position; an artifact by its ref, wherever it appears.
        key = (item, 0 if isinstance(item, ArtifactFacts) else position)
        found = seen.get(key) if seen is not None else None
        if found is None:
            if isinstance(item, ArtifactFacts):
                name = cr.describe_artifact(item.kind, item.ref or None)
                kind, labels = item.kind, item.labels
            elif isinstance(item, Labels):
                name, kind, labels = f"input {position}", ArtifactKind.DATASET, item
            else:
                raise TypeError(f"an input is Labels or ArtifactFacts, not {type(item).__name__}")
            found = _NamedInput(name, kind, labels, cr.label_words("input", name, labels))
            if seen is not None:
                seen[key] = found
        named.append(found)
    return named


def _without_conflicts(
    requests: Sequence[AccessRequest], indexes: list[int]
) -> list[list[tuple[int, cr.Request, list[cr.Entity]]]]:
    """Split requests into Cedar batches in which each entity uid has one content.

    Two requests may describe the same uid differently (a user whose role changed between
    them); one entity store cannot hold both, so they go to different batches.
    """
    batches: list[list[tuple[int, cr.Request, list[cr.Entity]]]] = []
    stores: list[dict[tuple[str, str], cr.Entity]] = []
    for index in indexes:
        uids, needed = cr.access_entities(requests[index].caller, requests[index].resource)
        keyed = {(e["uid"]["type"], e["uid"]["id"]): e for e in needed}
        for batch, store in zip(batches, stores, strict=True):
            if all(store.get(key, entity) == entity for key, entity in keyed.items()):
                store.update(keyed)
                batch.append((index, uids, needed))
                break
        else:
            batches.append([(index, uids, needed)])
            stores.append(dict(keyed))
    return batches


def _failure(message: str) -> Verdict:
    return Verdict(allowed=False, fired=(), failed=(), errors=(message,))


def _positional(cedar_id: str) -> tuple[int, str]:
    digits = cedar_id.removeprefix("policy")
    return (int(digits), cedar_id) if digits.isdigit() else (1 << 30, cedar_id)


@functools.lru_cache(maxsize=1024)
def _compile_template(template: str) -> _Template:
    """``"a {x.y} b"`` → ``("a {} b", ("x.y",))``, parsed once per text."""
    pieces: list[str] = []
    keys: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(_escape_braces(template[position : match.start()]) + "{}")
        keys.append(match.group(1))
        position = match.end()
    if not keys:
        return (template, ())
    pieces.append(_escape_braces(template[position:]))
    return ("".join(pieces), tuple(keys))


def _literal(text: str) -> _Template:
    return (text, ())


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _fill(template: _Template, words: Mapping[str, str]) -> str:
    text, keys = template
    if not keys:
        return text
    return text.format(*[words.get(key, "{" + key + "}") for key in keys])


# --- the shipped engine, for callers that need no other ---------------------------------


@functools.cache
def default_engine() -> PolicyEngine:
    """The engine over the shipped policies (built once per process)."""
    return PolicyEngine.shipped()


def placement(inputs: Sequence[Input], pool: PoolFacts) -> Decision:
    """``PolicyEngine.placement`` with the shipped policies."""
    return default_engine().placement(inputs, pool)


def allowed_pools(inputs: Sequence[Input], pools: Iterable[PoolFacts]) -> dict[str, Decision]:
    """``PolicyEngine.allowed_pools`` with the shipped policies."""
    return default_engine().allowed_pools(inputs, pools)


def export(
    artifact: Input,
    destination_region: str,
    destination_jurisdiction: str,
    *,
    destination_max_classification: Classification = Classification.SENSITIVE,
    caller: Caller | None = None,
) -> Decision:
    """``PolicyEngine.export`` with the shipped policies."""
    return default_engine().export(
        artifact,
        destination_region,
        destination_jurisdiction,
        destination_max_classification=destination_max_classification,
        caller=caller,
    )


def authorize(
    caller: Caller,
    action: Action,
    resource: AccessResource,
    *,
    destination: Destination | None = None,
) -> Decision:
    """``PolicyEngine.authorize`` with the shipped policies."""
    return default_engine().authorize(caller, action, resource, destination=destination)
