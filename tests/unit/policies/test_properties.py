"""Property tests (hypothesis): Cedar agrees with the plain-Python reference rules, no allowed
placement or export violates a label, effective labels only get stricter along lineage, a
student of a KR-only teacher never leaves Korea, and the cache never changes a decision."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_builders import fresh_engine

from policies import (
    AccessRequest,
    Action,
    ArtifactFacts,
    ArtifactKind,
    AuditStream,
    Caller,
    Classification,
    Destination,
    JobFacts,
    Labels,
    MemberRef,
    Platform,
    PolicyEngine,
    PoolFacts,
    Role,
    effective_label,
)
from policies.lineage import derived_from, lineage_labels
from policies.reference import (
    at_least_as_strict,
    export_violations,
    placement_allowed,
    schedule_violations,
)

REGIONS = ("kr-seoul", "kr-daejeon", "kr-busan", "jp-tokyo", "us-east-1", "eu-west-1")
KR_REGIONS = ("kr-seoul", "kr-daejeon", "kr-busan")
COUNTRIES = ("KR", "JP", "US", "IE")
BASES = (None, None, "consent", "contract", "PIPA 28-8")

ENGINE = fresh_engine()
UNCACHED = fresh_engine(cache_size=0)
CEDAR = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

classifications = st.sampled_from(list(Classification))


@st.composite
def label_strategy(draw: st.DrawFn, regions: tuple[str, ...] = REGIONS) -> Labels:
    return Labels(
        jurisdiction=draw(st.sampled_from(COUNTRIES)),
        allowed_regions=frozenset(draw(st.sets(st.sampled_from(regions), max_size=4))),
        classification=draw(classifications),
        personal_info=draw(st.booleans()),
        transfer_basis=draw(st.sampled_from(BASES)),
    )


@st.composite
def pool_strategy(draw: st.DrawFn) -> PoolFacts:
    region = draw(st.sampled_from(REGIONS))
    return PoolFacts(
        name=f"pool-{draw(st.integers(0, 10_000))}",
        region=region,
        jurisdiction=draw(st.sampled_from(COUNTRIES)),
        max_classification=draw(classifications),
    )


pools_strategy = st.lists(pool_strategy(), min_size=1, max_size=6, unique_by=lambda p: p.name)


@st.composite
def lineage(draw: st.DrawFn) -> tuple[list[Labels], list[tuple[int, ...]]]:
    """Artifacts in creation order, and for each the indexes of its inputs (() for sources)."""
    artifacts = draw(st.lists(label_strategy(), min_size=1, max_size=3))
    parents: list[tuple[int, ...]] = [() for _ in artifacts]
    for _ in range(draw(st.integers(1, 6))):
        chosen = draw(st.sets(st.integers(0, len(artifacts) - 1), min_size=1, max_size=3))
        fresh = draw(st.lists(label_strategy(), max_size=2))
        for extra in fresh:
            artifacts.append(extra)
            parents.append(())
        inputs = tuple(sorted(chosen)) + tuple(range(len(artifacts) - len(fresh), len(artifacts)))
        artifacts.append(effective_label(artifacts[i] for i in inputs))
        parents.append(inputs)
    return artifacts, parents


def _obeys_labels(label: Labels, region: str, jurisdiction: str, clearance: Classification) -> bool:
    return (
        region in label.allowed_regions
        and label.classification <= clearance
        and (
            not label.personal_info
            or label.transfer_basis is not None
            or label.jurisdiction == jurisdiction
        )
    )


@CEDAR
@given(inputs=st.lists(label_strategy(), min_size=1, max_size=4), pools=pools_strategy)
def test_cedar_agrees_with_the_reference_and_never_violates_labels(
    inputs: list[Labels], pools: list[PoolFacts]
) -> None:
    decisions = ENGINE.allowed_pools(inputs, pools)
    for target in pools:
        decision = decisions[target.name]
        assert decision.allowed == placement_allowed(inputs, target)
        if decision.allowed:
            for label in inputs:
                assert _obeys_labels(
                    label, target.region, target.jurisdiction, target.max_classification
                )
        else:
            expected = {rule for label in inputs for rule in schedule_violations(label, target)}
            assert set(decision.policy_ids) == expected
            assert decision.reasons


@CEDAR
@given(
    label=label_strategy(),
    region=st.sampled_from(REGIONS),
    country=st.sampled_from(COUNTRIES),
    clearance=classifications,
)
def test_export_agrees_with_the_reference(
    label: Labels, region: str, country: str, clearance: Classification
) -> None:
    decision = ENGINE.export(label, region, country, destination_max_classification=clearance)
    expected = export_violations(label, Destination(region, country, clearance))
    assert decision.allowed == (not expected)
    assert set(decision.policy_ids) == set(expected)
    if decision.allowed:
        assert _obeys_labels(label, region, country, clearance)


@settings(max_examples=150, deadline=None)
@given(chain=lineage())
def test_effective_labels_only_get_stricter_along_lineage(
    chain: tuple[list[Labels], list[tuple[int, ...]]],
) -> None:
    artifacts, parents = chain
    for index, inputs in enumerate(parents):
        derived = artifacts[index]
        for parent in inputs:
            source = artifacts[parent]
            assert derived.allowed_regions <= source.allowed_regions
            assert derived.classification >= source.classification
            assert derived.personal_info or not source.personal_info
            assert at_least_as_strict(derived, source)


def _ancestors(parents: list[tuple[int, ...]], index: int) -> set[int]:
    seen: set[int] = set()
    stack = list(parents[index])
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(parents[current])
    return seen


@CEDAR
@given(chain=lineage(), pools=pools_strategy)
def test_a_derived_artifact_is_placeable_only_where_all_its_ancestors_are(
    chain: tuple[list[Labels], list[tuple[int, ...]]], pools: list[PoolFacts]
) -> None:
    artifacts, parents = chain
    placeable = {
        index: ENGINE.allowed_pools([label], pools) for index, label in enumerate(artifacts)
    }
    for index in range(len(artifacts)):
        for target in pools:
            if placeable[index][target.name].allowed:
                for ancestor in _ancestors(parents, index):
                    assert placeable[ancestor][target.name].allowed, (index, ancestor, target)


@CEDAR
@given(
    teacher=label_strategy(regions=KR_REGIONS),
    generations=st.lists(st.lists(label_strategy(), max_size=2), min_size=1, max_size=3),
    pools=pools_strategy,
    destination=st.sampled_from(REGIONS),
    country=st.sampled_from(COUNTRIES),
)
def test_a_student_of_a_kr_only_teacher_never_leaves_korea(
    teacher: Labels,
    generations: list[list[Labels]],
    pools: list[PoolFacts],
    destination: str,
    country: str,
) -> None:
    student = teacher
    for extra in generations:  # distil, then fine-tune the student, ...
        student = effective_label([student, *extra])
    assert student.allowed_regions <= set(KR_REGIONS)
    for name, decision in ENGINE.allowed_pools([student], pools).items():
        target = next(p for p in pools if p.name == name)
        if not target.region.startswith("kr-"):
            assert not decision.allowed
            assert "residency.schedule.region" in decision.policy_ids
    exported = ENGINE.export(
        student, destination, country, destination_max_classification=Classification.CLASSIFIED
    )
    if not destination.startswith("kr-"):
        assert not exported.allowed
        assert "residency.export.region" in exported.policy_ids


@CEDAR
@given(
    jobs=st.dictionaries(
        st.sampled_from(["a", "b", "c"]), st.lists(label_strategy(), max_size=3), min_size=1
    ),
    pools=pools_strategy,
)
def test_the_cache_never_changes_a_decision(
    jobs: dict[str, list[Labels]], pools: list[PoolFacts]
) -> None:
    cached_engine: PolicyEngine = ENGINE
    first = cached_engine.allowed_pools_for_jobs(jobs, pools)
    again = cached_engine.allowed_pools_for_jobs(jobs, pools)
    uncached = UNCACHED.allowed_pools_for_jobs(jobs, pools)
    assert first == again == uncached
    for job, inputs in jobs.items():
        for target in pools:
            assert UNCACHED.placement(inputs, target) == first[job][target.name]


@settings(max_examples=150, deadline=None)
@given(st.lists(label_strategy(), min_size=1, max_size=5), st.randoms())
def test_effective_label_ignores_order_and_grouping(
    labels: list[Labels], rnd: random.Random
) -> None:
    shuffled = list(labels)
    rnd.shuffle(shuffled)
    assert effective_label(shuffled) == effective_label(labels)
    split = len(labels) // 2
    if split:
        grouped = effective_label([effective_label(labels[:split]), *labels[split:]])
        assert grouped == effective_label(labels)


callers = st.builds(
    Caller,
    user_id=st.sampled_from(["u1", "u2", "u3"]),
    role=st.sampled_from(list(Role)),
    member=st.sampled_from([None, "m-a", "m-b"]),
)
resources = st.one_of(
    st.builds(JobFacts, ref=st.sampled_from(["j1", "j2"]), member=st.sampled_from(["m-a", "m-b"])),
    st.builds(
        ArtifactFacts,
        ref=st.sampled_from(["d1", "d2"]),
        labels=label_strategy(),
        kind=st.sampled_from(list(ArtifactKind)),
        member=st.sampled_from([None, "m-a", "m-b"]),
    ),
    st.builds(MemberRef, ref=st.sampled_from(["m-a", "m-b"])),
    st.builds(AuditStream, member=st.sampled_from([None, "m-a", "m-b"])),
    st.just(Platform()),
)
access_requests = st.builds(
    AccessRequest,
    caller=callers,
    action=st.sampled_from([a for a in Action if a is not Action.SCHEDULE]),
    resource=resources,
    destination=st.builds(
        Destination,
        region=st.sampled_from(REGIONS),
        jurisdiction=st.sampled_from(COUNTRIES),
        max_classification=classifications,
    ),
)


@CEDAR
@given(st.lists(access_requests, min_size=1, max_size=12))
def test_the_cache_never_changes_an_access_decision(requests: list[AccessRequest]) -> None:
    first = ENGINE.authorize_batch(requests)
    again = ENGINE.authorize_batch(requests)
    uncached = [
        UNCACHED.authorize(r.caller, r.action, r.resource, destination=r.destination)
        for r in requests
    ]
    assert first == again == uncached
    for request, decision in zip(requests, first, strict=True):
        if decision.allowed and request.caller.role is Role.AUDITOR:
            assert request.action in (
                Action.READ,
                Action.READ_USAGE,
                Action.READ_AUDIT,
                Action.EXPORT_AUDIT,
            )
        if decision.allowed and isinstance(request.resource, JobFacts | ArtifactFacts):
            owner = request.resource.member
            if request.caller.member is not None and owner is not None:
                assert owner == request.caller.member


@settings(max_examples=100, deadline=None)
@given(chain=lineage(), changed=st.integers(0, 20))
def test_lineage_labels_reproduce_the_chain_and_find_every_descendant(
    chain: tuple[list[Labels], list[tuple[int, ...]]], changed: int
) -> None:
    artifacts, parents = chain
    own = {str(i): label for i, label in enumerate(artifacts) if not parents[i]}
    inputs = {str(i): [str(p) for p in ps] for i, ps in enumerate(parents) if ps}
    assert lineage_labels(own, inputs) == {str(i): label for i, label in enumerate(artifacts)}
    source = changed % len(artifacts)
    expected = {str(i) for i in range(len(artifacts)) if source in _ancestors(parents, i)}
    assert derived_from(inputs, [str(source)]) == expected
