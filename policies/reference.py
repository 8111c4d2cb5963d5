"""The residency rules restated in plain Python: a reference to cross-check Cedar against.

Not used to decide anything; property tests compare it with the Cedar policies, rule by
rule, so that a change to either that makes them disagree is caught.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.facts import Destination, PoolFacts
from policies.labels import Classification, Labels


def schedule_violations(labels: Labels, pool: PoolFacts) -> tuple[str, ...]:
    """The ids of the residency rules that forbid processing data with ``labels`` on ``pool``.

    (a) the pool's region must be among the allowed regions; (b) the classification must not
    exceed the pool's maximum; (c) personal information needs a transfer basis to be processed
    outside its jurisdiction.
    """
    return _violations("schedule", labels, pool.region, pool.jurisdiction, pool.max_classification)


def export_violations(labels: Labels, destination: Destination) -> tuple[str, ...]:
    """The ids of the residency rules that forbid exporting ``labels`` to ``destination``."""
    return _violations(
        "export",
        labels,
        destination.region,
        destination.jurisdiction,
        destination.max_classification,
    )


def placement_allowed(inputs: Sequence[Labels], pool: PoolFacts) -> bool:
    """A job may run on ``pool`` when no input is forbidden there (and it has inputs)."""
    return bool(inputs) and not any(schedule_violations(label, pool) for label in inputs)


def at_least_as_strict(derived: Labels, source: Labels) -> bool:
    """Whether ``derived`` is never placeable or exportable where ``source`` is not.

    Regions shrink or stay, classification rises or stays, and wherever the derived label's
    personal information may be processed the source's may be too: a source holding personal
    information without a transfer basis stays in its jurisdiction, and so does the derived.
    """
    if not derived.allowed_regions <= source.allowed_regions:
        return False
    if derived.classification < source.classification:
        return False
    if _processable_anywhere(source):
        return True
    # The source holds personal information without a basis: only its own jurisdiction (none
    # at all if that is a composite) may process it, so the derived label may allow no more.
    if _processable_anywhere(derived):
        return False
    return derived.jurisdiction == source.jurisdiction or len(derived.jurisdictions) > 1


def _processable_anywhere(labels: Labels) -> bool:
    """Personal-information rules put no jurisdiction limit on these labels."""
    return not labels.personal_info or labels.transfer_basis is not None


def _violations(
    action: str,
    labels: Labels,
    region: str,
    jurisdiction: str,
    clearance: Classification,
) -> tuple[str, ...]:
    found = []
    if region not in labels.allowed_regions:
        found.append(f"residency.{action}.region")
    if labels.classification > clearance:
        found.append(f"residency.{action}.classification")
    if (
        labels.personal_info
        and labels.transfer_basis is None
        and labels.jurisdiction != jurisdiction
    ):
        found.append(f"residency.{action}.personal-info-transfer")
    return tuple(found)
