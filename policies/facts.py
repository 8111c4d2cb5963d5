"""The facts a policy decision is made from: pools, artifacts, callers and the objects they act on.

All are plain frozen dataclasses built by the caller (the control plane) from its own rows.
Pool facts are admin-asserted: a node's own region label is never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from policies.labels import (
    COUNTRY_PATTERN,
    REGION_PATTERN,
    Classification,
    InvalidLabels,
    Labels,
)


def _require_region(region: str, what: str) -> None:
    if not isinstance(region, str) or not REGION_PATTERN.match(region):
        raise InvalidLabels(f"{what} region {region!r} must match {REGION_PATTERN.pattern}")


def _require_country(country: str, what: str) -> None:
    if not isinstance(country, str) or not COUNTRY_PATTERN.match(country):
        raise InvalidLabels(f"{what} jurisdiction {country!r} must be an ISO 3166 country code")


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """A pool as the platform admin registered it: where it is and what it is cleared for."""

    name: str
    region: str
    jurisdiction: str
    max_classification: Classification = Classification.OPEN

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidLabels("a pool needs a name")
        _require_region(self.region, f"pool {self.name!r}")
        _require_country(self.jurisdiction, f"pool {self.name!r}")
        object.__setattr__(
            self, "max_classification", Classification.parse(self.max_classification)
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolFacts:
        """From ``{"name", "region", "jurisdiction", "max_classification"}`` (a pool row)."""
        try:
            return cls(
                name=str(data["name"]),
                region=data["region"],
                jurisdiction=data["jurisdiction"],
                max_classification=Classification.parse(data.get("max_classification", "open")),
            )
        except KeyError as missing:
            raise InvalidLabels(f"pool facts need {missing.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of these facts (for audit details)."""
        return {
            "name": self.name,
            "region": self.region,
            "jurisdiction": self.jurisdiction,
            "max_classification": self.max_classification.text,
        }


@dataclass(frozen=True, slots=True)
class Destination:
    """Where an artifact would be exported to, and the highest classification it may receive.

    The default clearance is ``SENSITIVE``: classified artifacts leave only to a destination
    explicitly asserted to be cleared for them.
    """

    region: str
    jurisdiction: str
    max_classification: Classification = Classification.SENSITIVE

    def __post_init__(self) -> None:
        _require_region(self.region, "destination")
        _require_country(self.jurisdiction, "destination")
        object.__setattr__(
            self, "max_classification", Classification.parse(self.max_classification)
        )


class ArtifactKind(StrEnum):
    """The Cedar entity type an artifact is evaluated as."""

    DATASET = "dataset"
    MODEL = "model"

    @classmethod
    def of(cls, kind: str) -> ArtifactKind:
        """Map the control plane's kinds: ``data``/``outputs`` are datasets, the rest models."""
        lowered = kind.strip().lower()
        if lowered in ("data", "dataset", "outputs", "output", "predictions"):
            return cls.DATASET
        return cls.MODEL


@dataclass(frozen=True, slots=True)
class ArtifactFacts:
    """A labelled dataset or model. ``member`` is None for platform-provided models (A.X K1)."""

    ref: str
    labels: Labels
    kind: ArtifactKind = ArtifactKind.DATASET
    member: str | None = None


class Role(StrEnum):
    """Roles of ARCHITECTURE §1 (the same strings as the control plane's roles)."""

    PLATFORM_ADMIN = "platform_admin"
    MEMBER_ADMIN = "member_admin"
    MEMBER_USER = "member_user"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks. ``member`` is None for platform admins and auditors."""

    user_id: str
    role: Role
    member: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))


@dataclass(frozen=True, slots=True)
class JobFacts:
    """A job, as far as access is concerned: which member owns it."""

    ref: str
    member: str


@dataclass(frozen=True, slots=True)
class MemberRef:
    """A consortium member as the object of an action (its users, tokens, usage)."""

    ref: str


@dataclass(frozen=True, slots=True)
class AuditStream:
    """One hash-chained audit stream: a member's (``member`` set) or the platform's (None)."""

    member: str | None = None


@dataclass(frozen=True, slots=True)
class Platform:
    """The platform itself, the object of admin actions (members, quotas, pools, policies)."""

    ref: str = "nuri"


class Action(StrEnum):
    """The actions of the Cedar schema (``Nuri::Action::"<value>"``)."""

    SUBMIT = "submit"
    CANCEL = "cancel"
    READ = "read"
    EXPORT = "export"
    SCHEDULE = "schedule"
    MANAGE_USERS = "manage_users"
    READ_USAGE = "read_usage"
    MANAGE_MEMBERS = "manage_members"
    MANAGE_QUOTAS = "manage_quotas"
    MANAGE_POOLS = "manage_pools"
    MANAGE_POLICIES = "manage_policies"
    READ_AUDIT = "read_audit"
    EXPORT_AUDIT = "export_audit"


AccessResource = JobFacts | ArtifactFacts | MemberRef | AuditStream | Platform
