"""Labels: parsing the stored JSON, classification order and aliases, effective labels."""

from __future__ import annotations

import pytest
from policy_builders import labels

from policies import (
    Classification,
    InvalidLabels,
    Labels,
    PoolFacts,
    effective_label,
)
from policies.facts import ArtifactKind, Destination


def test_round_trip_of_the_stored_json() -> None:
    stored = {
        "jurisdiction": "KR",
        "allowed_regions": ["kr-seoul", "kr-daejeon"],
        "classification": "sensitive",
        "personal_info": True,
        "transfer_basis": "PIPA art. 28-8 (consent)",
    }
    parsed = Labels.from_dict(stored)
    assert parsed.allowed_regions == {"kr-seoul", "kr-daejeon"}
    assert parsed.classification is Classification.SENSITIVE
    assert parsed.to_dict() == {**stored, "allowed_regions": ["kr-daejeon", "kr-seoul"]}
    assert Labels.from_dict(parsed.to_dict()) == parsed


def test_defaults_and_normalisation() -> None:
    parsed = Labels.from_dict(
        {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"], "transfer_basis": "  "}
    )
    assert parsed.classification is Classification.OPEN
    assert parsed.personal_info is False
    assert parsed.transfer_basis is None
    assert Labels("US+KR", frozenset()).jurisdiction == "KR+US"


@pytest.mark.parametrize(
    "bad",
    [
        {"allowed_regions": ["kr-seoul"]},
        {"jurisdiction": "kr", "allowed_regions": ["kr-seoul"]},
        {"jurisdiction": "KOR", "allowed_regions": ["kr-seoul"]},
        {"jurisdiction": "KR", "allowed_regions": "kr-seoul"},
        {"jurisdiction": "KR", "allowed_regions": ["Seoul!"]},
        {"jurisdiction": "KR", "allowed_regions": [], "classification": "secret"},
        {"jurisdiction": "KR", "allowed_regions": [], "personal_info": "yes"},
        {"jurisdiction": "KR", "allowed_regions": [], "transfer_basis": 3},
        {"jurisdiction": "KR", "allowed_regions": [], "colour": "red"},
    ],
)
def test_invalid_labels_are_refused_with_a_code(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidLabels) as raised:
        Labels.from_dict(bad)
    assert raised.value.code == "invalid_labels"


def test_classification_order_and_aliases() -> None:
    assert Classification.OPEN < Classification.SENSITIVE < Classification.CLASSIFIED
    assert Classification.parse("Sensitive") is Classification.SENSITIVE
    assert Classification.parse("csap-low") is Classification.OPEN
    assert Classification.parse("csap-moderate") is Classification.SENSITIVE
    assert Classification.parse("csap-high") is Classification.CLASSIFIED
    assert Classification.parse("상") is Classification.CLASSIFIED
    assert Classification.parse(2) is Classification.CLASSIFIED
    assert (
        Labels.from_dict(
            {"jurisdiction": "KR", "allowed_regions": [], "classification": "csap-high"}
        ).to_dict()["classification"]
        == "classified"
    )
    for bad in ("top-secret", 7, True):
        with pytest.raises(InvalidLabels):
            Classification.parse(bad)


def test_pool_and_destination_facts() -> None:
    pool = PoolFacts.from_dict(
        {"name": "p", "region": "kr-seoul", "jurisdiction": "KR", "max_classification": "sensitive"}
    )
    assert pool.max_classification is Classification.SENSITIVE
    assert pool.to_dict()["max_classification"] == "sensitive"
    with pytest.raises(InvalidLabels):
        PoolFacts.from_dict({"name": "p", "region": "kr-seoul"})
    with pytest.raises(InvalidLabels):
        PoolFacts("p", "kr-seoul", "KR+US")
    assert Destination("kr-seoul", "KR").max_classification is Classification.SENSITIVE
    assert ArtifactKind.of("data") is ArtifactKind.DATASET
    assert ArtifactKind.of("adapter") is ArtifactKind.MODEL


EFFECTIVE_TABLE = [
    # (case, inputs, expected effective label)
    (
        "regions intersect, highest classification",
        [
            labels(regions={"kr-seoul", "kr-daejeon", "us-east-1"}, classification="open"),
            labels(regions={"kr-seoul", "us-east-1"}, classification="sensitive"),
        ],
        labels(regions={"kr-seoul", "us-east-1"}, classification="sensitive"),
    ),
    (
        "disjoint regions: nowhere",
        [labels(regions={"kr-seoul"}), labels("US", {"us-east-1"})],
        labels("KR+US", set()),
    ),
    (
        "personal info decides the jurisdiction",
        [labels("US", {"kr-seoul"}), labels("KR", {"kr-seoul"}, personal_info=True)],
        labels("KR", {"kr-seoul"}, personal_info=True),
    ),
    (
        "basis kept when every personal input has one",
        [
            labels(personal_info=True, transfer_basis="consent"),
            labels(personal_info=True, transfer_basis="contract"),
            labels(),
        ],
        labels(personal_info=True, transfer_basis="consent; contract"),
    ),
    (
        "basis dropped when one personal input lacks it",
        [labels(personal_info=True, transfer_basis="consent"), labels(personal_info=True)],
        labels(personal_info=True),
    ),
    (
        "basis of a non-personal input is irrelevant",
        [labels(transfer_basis="consent"), labels()],
        labels(),
    ),
    (
        "personal info from two jurisdictions: composite",
        [labels("KR", personal_info=True), labels("US", personal_info=True)],
        labels("KR+US", personal_info=True),
    ),
]


@pytest.mark.parametrize(
    ("case", "inputs", "expected"), EFFECTIVE_TABLE, ids=[c[0] for c in EFFECTIVE_TABLE]
)
def test_effective_label(case: str, inputs: list[Labels], expected: Labels) -> None:
    assert effective_label(inputs) == expected


def test_effective_label_needs_an_input() -> None:
    with pytest.raises(InvalidLabels):
        effective_label([])


def test_a_single_input_keeps_its_label() -> None:
    label = labels(classification="classified", personal_info=True, transfer_basis="consent")
    assert effective_label([label]) == label
