"""Lineage: artifacts derived from a relabelled input, and their labels recomputed."""

from __future__ import annotations

import pytest
from policy_builders import labels

from policies import InvalidLabels, effective_label
from policies.lineage import derived_from, lineage_labels

# ax-k1 (teacher) + corpus -> student; student + kr-chat -> chat-ft; chat-ft -> outputs
INPUTS = {
    "student": ["ax-k1", "corpus"],
    "chat-ft": ["student", "kr-chat"],
    "outputs": ["chat-ft"],
    "unrelated": ["other"],
}
OWN = {
    "ax-k1": labels(regions={"kr-seoul", "kr-daejeon"}),
    "corpus": labels("US", {"kr-seoul", "us-east-1"}),
    "kr-chat": labels(personal_info=True, classification="sensitive"),
    "other": labels(),
}


def test_derived_from_follows_lineage_transitively() -> None:
    assert derived_from(INPUTS, ["ax-k1"]) == {"student", "chat-ft", "outputs"}
    assert derived_from(INPUTS, ["kr-chat"]) == {"chat-ft", "outputs"}
    assert derived_from(INPUTS, ["outputs"]) == set()


def test_lineage_labels_recompute_after_a_relabel() -> None:
    before = lineage_labels(OWN, INPUTS)
    assert before["student"].allowed_regions == {"kr-seoul"}
    assert before["outputs"] == effective_label([before["student"], OWN["kr-chat"]])
    relabelled = {**OWN, "ax-k1": labels(regions={"kr-daejeon"}, classification="classified")}
    after = lineage_labels(relabelled, INPUTS)
    assert after["student"].allowed_regions == frozenset()
    assert after["outputs"].classification.text == "classified"
    assert after["unrelated"] == before["unrelated"]


@pytest.mark.parametrize(
    "inputs",
    [
        {"a": ["missing"]},
        {"a": []},
        {"a": ["b"], "b": ["a"]},
    ],
)
def test_broken_lineage_is_refused(inputs: dict[str, list[str]]) -> None:
    with pytest.raises(InvalidLabels):
        lineage_labels({"src": labels()}, inputs)
