"""Labels only widen with authority: ``widening(before, after)`` names the parts in which a
relabelling makes data less restricted, ``narrowing`` those in which it makes it stricter.

Property tests (hypothesis): no change never widens; a change that widens nothing opens no
pool and no export destination (Cedar and the reference rules agree); no chain of
non-widening changes ends wider than it began, so a narrowing cannot launder a later
widening; an input's non-widening change never widens the effective label of its inputs.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_builders import fresh_engine, labels

from policies import (
    LABEL_PARTS,
    Classification,
    Labels,
    PoolFacts,
    effective_label,
    narrowing,
    widening,
)
from policies.facts import Destination
from policies.labels import join_jurisdictions, transfer_bases
from policies.reference import (
    at_least_as_strict,
    export_violations,
    placement_allowed,
)

REGIONS = ("kr-seoul", "kr-daejeon", "jp-tokyo", "us-west")
COUNTRIES = ("KR", "JP", "US")
BASES = (None, None, "consent", "contract", "consent; contract", "PIPA 28-8")

ENGINE = fresh_engine()
CEDAR = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE = settings(max_examples=200, deadline=None)

classifications = st.sampled_from(list(Classification))
jurisdictions = st.sets(st.sampled_from(COUNTRIES), min_size=1, max_size=2).map(join_jurisdictions)


@st.composite
def label_strategy(draw: st.DrawFn) -> Labels:
    """Labels over few regions and countries, so that changes often collide."""
    return Labels(
        jurisdiction=draw(jurisdictions),
        allowed_regions=frozenset(draw(st.sets(st.sampled_from(REGIONS), max_size=4))),
        classification=draw(classifications),
        personal_info=draw(st.booleans()),
        transfer_basis=draw(st.sampled_from(BASES)),
    )


@st.composite
def narrowed(draw: st.DrawFn, label: Labels) -> Labels:
    """Any change of ``label`` that only keeps or tightens it, built part by part."""
    kept = sorted(label.allowed_regions)
    regions = draw(st.sets(st.sampled_from(kept))) if kept else frozenset()
    higher = [c for c in Classification if c >= label.classification]
    personal = label.personal_info or draw(st.booleans())
    if personal and not label.personal_info:
        # First declaring personal information: its jurisdiction and basis are new facts.
        jurisdiction = draw(jurisdictions)
        basis = draw(st.sampled_from(BASES))
    else:
        extra = draw(st.sets(st.sampled_from(COUNTRIES), max_size=1))
        jurisdiction = join_jurisdictions(label.jurisdictions | extra)
        grounds = transfer_bases(label)
        more = "; ".join(sorted(grounds | {draw(st.sampled_from(("consent", "treaty")))}))
        basis = draw(st.sampled_from((None, label.transfer_basis, more))) if grounds else None
    return Labels(
        jurisdiction=jurisdiction,
        allowed_regions=frozenset(regions),
        classification=draw(st.sampled_from(higher)),
        personal_info=personal,
        transfer_basis=basis,
    )


@st.composite
def change(draw: st.DrawFn) -> tuple[Labels, Labels]:
    """A relabelling: half the time one that only narrows, otherwise any other label."""
    before = draw(label_strategy())
    after = draw(st.one_of(narrowed(before), label_strategy()))
    return before, after


@st.composite
def pool_strategy(draw: st.DrawFn) -> PoolFacts:
    return PoolFacts(
        name=f"pool-{draw(st.integers(0, 10_000))}",
        region=draw(st.sampled_from(REGIONS)),
        jurisdiction=draw(st.sampled_from(COUNTRIES)),
        max_classification=draw(classifications),
    )


pools_strategy = st.lists(pool_strategy(), min_size=1, max_size=6, unique_by=lambda p: p.name)
destinations = st.builds(
    Destination,
    region=st.sampled_from(REGIONS),
    jurisdiction=st.sampled_from(COUNTRIES),
    max_classification=classifications,
)


# --- each part, by example ---------------------------------------------------------------

PI = {"personal_info": True}


@pytest.mark.parametrize(
    ("before", "after", "widens", "narrows"),
    [
        # allowed regions: a region added widens, a different (non-subset) set both.
        ({}, {"regions": {"kr-seoul", "kr-daejeon", "us-west"}}, ["allowed_regions"], []),
        ({}, {"regions": {"kr-seoul", "us-west"}}, ["allowed_regions"], ["allowed_regions"]),
        ({}, {"regions": {"kr-seoul"}}, [], ["allowed_regions"]),
        # classification: lowered widens.
        ({"classification": "sensitive"}, {}, ["classification"], []),
        ({}, {"classification": "classified"}, [], ["classification"]),
        # personal information: true -> false widens.
        (PI, {}, ["personal_info"], []),
        ({}, PI, [], ["personal_info"]),
        # transfer basis: recording, replacing or loosening one widens; removing it narrows
        # (without a basis personal information stays in its jurisdiction).
        (PI, {**PI, "transfer_basis": "consent"}, ["transfer_basis"], []),
        (
            {**PI, "transfer_basis": "consent"},
            {**PI, "transfer_basis": "contract"},
            ["transfer_basis"],
            ["transfer_basis"],
        ),
        (
            {**PI, "transfer_basis": "consent; contract"},
            {**PI, "transfer_basis": "consent"},
            ["transfer_basis"],
            [],
        ),
        ({**PI, "transfer_basis": "consent"}, PI, [], ["transfer_basis"]),
        # jurisdiction: a governing country dropped widens; a composite matches no pool.
        ({}, {"jurisdiction": "US"}, ["jurisdiction"], ["jurisdiction"]),
        (PI, {**PI, "jurisdiction": "US"}, ["jurisdiction"], ["jurisdiction"]),
        ({"jurisdiction": "KR+US"}, {}, ["jurisdiction"], []),
        ({}, {"jurisdiction": "KR+US"}, [], ["jurisdiction"]),
        # Declaring personal information narrows; its jurisdiction and basis widen nothing.
        (
            {},
            {**PI, "jurisdiction": "US", "transfer_basis": "consent"},
            [],
            ["personal_info", "jurisdiction"],
        ),
        # Several parts at once are all named, in LABEL_PARTS order.
        (
            {**PI, "classification": "classified"},
            {"jurisdiction": "US", "regions": {"us-west"}},
            ["allowed_regions", "classification", "personal_info", "jurisdiction"],
            ["allowed_regions"],
        ),
    ],
)
def test_each_part_that_widens_is_named(
    before: dict[str, Any], after: dict[str, Any], widens: list[str], narrows: list[str]
) -> None:
    old, new = labels(**before), labels(**after)
    assert widening(old, new) == widens
    assert narrowing(old, new) == narrows
    # Undoing the change widens exactly what it narrowed.
    assert widening(new, old) == narrows


def test_label_parts_are_the_stored_fields() -> None:
    assert set(LABEL_PARTS) <= set(labels().to_dict())


# --- properties ---------------------------------------------------------------------------


@PURE
@given(label=label_strategy())
def test_no_change_never_widens(label: Labels) -> None:
    assert widening(label, label) == [] and narrowing(label, label) == []
    same = Labels.from_dict(label.to_dict())
    assert widening(label, same) == [] and widening(same, label) == []


@PURE
@given(pair=change())
def test_results_are_parts_in_order_and_dual(pair: tuple[Labels, Labels]) -> None:
    before, after = pair
    for found in (widening(before, after), narrowing(before, after)):
        assert found == [p for p in LABEL_PARTS if p in found]
    assert narrowing(before, after) == widening(after, before)


@PURE
@given(data=st.data(), before=label_strategy())
def test_a_narrowing_widens_nothing(data: st.DataObject, before: Labels) -> None:
    after = data.draw(narrowed(before))
    assert widening(before, after) == []
    assert at_least_as_strict(after, before)


@PURE
@given(pair=change(), pools=pools_strategy, destination=destinations)
def test_what_widens_nothing_opens_no_pool_or_destination(
    pair: tuple[Labels, Labels], pools: list[PoolFacts], destination: Destination
) -> None:
    """Soundness against the reference rules: an empty ``widening`` means every pool and
    export destination the new labels allow was allowed before."""
    before, after = pair
    if widening(before, after):
        return
    assert at_least_as_strict(after, before)
    for pool in pools:
        assert not placement_allowed([after], pool) or placement_allowed([before], pool)
    if not export_violations(after, destination):
        assert not export_violations(before, destination)


@CEDAR
@given(pair=change(), pools=pools_strategy)
def test_cedar_opens_no_pool_to_a_change_that_widens_nothing(
    pair: tuple[Labels, Labels], pools: list[PoolFacts]
) -> None:
    before, after = pair
    was = {p for p, d in ENGINE.allowed_pools([before], pools).items() if d.allowed}
    now = {p for p, d in ENGINE.allowed_pools([after], pools).items() if d.allowed}
    if not now <= was:
        assert widening(before, after), (before, after, now - was)


@PURE
@given(data=st.data(), start=label_strategy(), steps=st.integers(1, 5))
def test_no_chain_of_narrowings_ends_wider(data: st.DataObject, start: Labels, steps: int) -> None:
    chain = [start]
    for _ in range(steps):
        chain.append(data.draw(narrowed(chain[-1])))
    for i, earlier in enumerate(chain):
        for later in chain[i:]:
            assert widening(earlier, later) == []


@PURE
@given(data=st.data(), first=label_strategy(), last=label_strategy())
def test_a_narrowing_cannot_launder_a_widening(
    data: st.DataObject, first: Labels, last: Labels
) -> None:
    """Narrowing composed with widening: after any narrowing ``first -> middle``, a step
    ``middle -> last`` that ends wider than ``first`` still widens something itself, so a
    member user cannot reach wider labels in two steps that it may not take in one."""
    middle = data.draw(narrowed(first))
    if widening(first, last):
        assert widening(middle, last)
    if not widening(middle, last):
        assert widening(first, last) == []


@PURE
@given(inputs=st.lists(label_strategy(), min_size=1, max_size=4))
def test_an_effective_label_is_never_wider_than_an_input(inputs: list[Labels]) -> None:
    derived = effective_label(inputs)
    for label in inputs:
        assert widening(label, derived) == []


@PURE
@given(data=st.data(), inputs=st.lists(label_strategy(), min_size=1, max_size=4))
def test_an_input_that_narrows_never_widens_the_effective_label(
    data: st.DataObject, inputs: list[Labels]
) -> None:
    index = data.draw(st.integers(0, len(inputs) - 1))
    changed = [*inputs]
    changed[index] = data.draw(narrowed(inputs[index]))
    before, after = effective_label(inputs), effective_label(changed)
    assert widening(before, after) == []
    assert at_least_as_strict(after, before)


@PURE
@given(inputs=st.lists(label_strategy(), min_size=1, max_size=4), extra=label_strategy())
def test_another_input_never_widens_the_effective_label(
    inputs: list[Labels], extra: Labels
) -> None:
    assert widening(effective_label(inputs), effective_label([*inputs, extra])) == []


@PURE
@given(data=st.data(), inputs=st.lists(label_strategy(), min_size=1, max_size=4))
def test_an_input_that_widens_is_the_only_way_the_effective_label_widens(
    data: st.DataObject, inputs: list[Labels]
) -> None:
    index = data.draw(st.integers(0, len(inputs) - 1))
    changed = [*inputs]
    changed[index] = data.draw(label_strategy())
    if widening(effective_label(inputs), effective_label(changed)):
        assert widening(inputs[index], changed[index])
