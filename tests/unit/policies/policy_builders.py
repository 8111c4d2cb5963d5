"""Builders for policy tests: labels, pools and artifacts with readable defaults."""

from __future__ import annotations

from policies import (
    ArtifactFacts,
    ArtifactKind,
    Caller,
    Classification,
    Labels,
    PolicyEngine,
    PoolFacts,
    Role,
)

KR_REGIONS = frozenset({"kr-seoul", "kr-daejeon"})


def fresh_engine(cache_size: int = 65_536) -> PolicyEngine:
    """An engine over the shipped policies with a cache of its own."""
    return PolicyEngine.shipped(cache_size=cache_size)


def labels(
    jurisdiction: str = "KR",
    regions: frozenset[str] | set[str] | tuple[str, ...] = KR_REGIONS,
    classification: Classification | str = Classification.OPEN,
    personal_info: bool = False,
    transfer_basis: str | None = None,
) -> Labels:
    """Labels, Korean and open by default."""
    return Labels(
        jurisdiction=jurisdiction,
        allowed_regions=frozenset(regions),
        classification=Classification.parse(classification),
        personal_info=personal_info,
        transfer_basis=transfer_basis,
    )


def pool(
    name: str = "seoul-h200",
    region: str = "kr-seoul",
    jurisdiction: str = "KR",
    max_classification: Classification | str = Classification.CLASSIFIED,
) -> PoolFacts:
    """A pool, in Seoul and cleared for classified data by default."""
    return PoolFacts(name, region, jurisdiction, Classification.parse(max_classification))


def dataset(ref: str, label: Labels, member: str | None = "m-kt") -> ArtifactFacts:
    """A member's dataset."""
    return ArtifactFacts(ref, label, ArtifactKind.DATASET, member)


def model(ref: str, label: Labels, member: str | None = None) -> ArtifactFacts:
    """A model (platform-provided unless a member is given)."""
    return ArtifactFacts(ref, label, ArtifactKind.MODEL, member)


def user(member: str | None = "m-kt", role: Role = Role.MEMBER_USER, name: str = "u1") -> Caller:
    """A caller; member users of member ``m-kt`` by default."""
    return Caller(name, role, member)
