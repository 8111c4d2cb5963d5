"""Facts → Cedar: entity JSON, request dicts, and the words used to explain a decision.

Schedule and residency-only export requests are built from facts alone: the Cedar ids of
their entities are derived from the facts (a site key for a pool, a digest for labels), never
from names. A decision is therefore a function of the facts, which is what lets the engine
cache it by them and evaluate identical (input, site) pairs once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from policies.facts import (
    AccessResource,
    ArtifactFacts,
    ArtifactKind,
    AuditStream,
    Caller,
    Destination,
    JobFacts,
    MemberRef,
    Platform,
    PoolFacts,
    Role,
)
from policies.labels import Classification, Labels
from policies.policy_set import NAMESPACE

ENTITY_TYPES = {
    ArtifactKind.DATASET: f"{NAMESPACE}::Dataset",
    ArtifactKind.MODEL: f"{NAMESPACE}::Model",
}
ACTION_TYPE = f"{NAMESPACE}::Action"
POOL_TYPE = f"{NAMESPACE}::Pool"
USER_TYPE = f"{NAMESPACE}::User"
MEMBER_TYPE = f"{NAMESPACE}::Member"
# The stand-in owner of an artifact when export is asked without a caller (residency only).
RESIDENCY_OWNER = "residency-check"

Uid = dict[str, str]
Entity = dict[str, Any]
Request = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Site:
    """What residency rules see of a pool: region, jurisdiction and clearance (not its name).

    ``cedar_id`` is a readable id computed from those facts (``kr-seoul|KR|classified``).
    """

    region: str
    jurisdiction: str
    max_classification: Classification
    cedar_id: str

    @classmethod
    def of(cls, pool: PoolFacts) -> Site:
        """The site of ``pool``."""
        clearance = pool.max_classification
        return cls(
            pool.region,
            pool.jurisdiction,
            clearance,
            f"{pool.region}|{pool.jurisdiction}|{clearance.text}",
        )


def uid(type_name: str, entity_id: str) -> Uid:
    """A Cedar entity uid in JSON form."""
    return {"type": type_name, "id": entity_id}


def action_uid(action: str) -> Uid:
    """The uid of ``Nuri::Action::"<action>"``."""
    return uid(ACTION_TYPE, action)


def labels_id(kind: ArtifactKind, labels: Labels) -> str:
    """A Cedar id for labels that depends on nothing but the labels."""
    text = json.dumps([kind.value, labels.to_dict()], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def labels_attrs(labels: Labels, member: str | None = None) -> dict[str, Any]:
    """The Cedar attributes of a Dataset or Model (classification as its rank)."""
    attrs: dict[str, Any] = {
        "jurisdiction": labels.jurisdiction,
        "allowed_regions": sorted(labels.allowed_regions),
        "classification": int(labels.classification),
        "personal_info": labels.personal_info,
    }
    if labels.transfer_basis is not None:
        attrs["transfer_basis"] = labels.transfer_basis
    if member is not None:
        attrs["member"] = {"__entity": uid(MEMBER_TYPE, member)}
    return attrs


def site_entity(site: Site) -> Entity:
    """The Pool entity of a schedule request."""
    return {
        "uid": uid(POOL_TYPE, site.cedar_id),
        "attrs": {
            "region": site.region,
            "jurisdiction": site.jurisdiction,
            "max_classification": int(site.max_classification),
        },
        "parents": [],
    }


def input_entity(kind: ArtifactKind, labels: Labels, entity_id: str | None = None) -> Entity:
    """The Dataset or Model entity of a schedule request (no owner: residency only).

    ``entity_id`` is ``labels_id(kind, labels)``, passed when already computed.
    """
    return {
        "uid": uid(ENTITY_TYPES[kind], entity_id or labels_id(kind, labels)),
        "attrs": labels_attrs(labels),
        "parents": [],
    }


def schedule_request(site: Site, kind: ArtifactKind, input_id: str) -> Request:
    """May the input with Cedar id ``input_id`` (see ``labels_id``) be processed at ``site``?"""
    return {
        "principal": uid(POOL_TYPE, site.cedar_id),
        "action": action_uid("schedule"),
        "resource": uid(ENTITY_TYPES[kind], input_id),
    }


def destination_context(destination: Destination) -> dict[str, Any]:
    """The ``context`` of an export request."""
    return {
        "destination": {
            "region": destination.region,
            "jurisdiction": destination.jurisdiction,
            "max_classification": int(destination.max_classification),
        }
    }


def user_entity(caller: Caller) -> Entity:
    """The User entity of ``caller``."""
    attrs: dict[str, Any] = {"role": caller.role.value}
    if caller.member is not None:
        attrs["member"] = {"__entity": uid(MEMBER_TYPE, caller.member)}
    return {"uid": uid(USER_TYPE, caller.user_id), "attrs": attrs, "parents": []}


def resource_entity(resource: AccessResource) -> Entity:
    """The Cedar entity of an object a caller acts on."""
    attrs: dict[str, Any]
    if isinstance(resource, JobFacts):
        attrs = {"member": {"__entity": uid(MEMBER_TYPE, resource.member)}}
        return {"uid": uid(f"{NAMESPACE}::Job", resource.ref), "attrs": attrs, "parents": []}
    if isinstance(resource, ArtifactFacts):
        attrs = labels_attrs(resource.labels, resource.member)
        return {
            "uid": uid(ENTITY_TYPES[resource.kind], resource.ref),
            "attrs": attrs,
            "parents": [],
        }
    if isinstance(resource, MemberRef):
        return {"uid": uid(MEMBER_TYPE, resource.ref), "attrs": {}, "parents": []}
    if isinstance(resource, AuditStream):
        attrs = {}
        if resource.member is not None:
            attrs["member"] = {"__entity": uid(MEMBER_TYPE, resource.member)}
        stream_id = resource.member or "platform"
        return {"uid": uid(f"{NAMESPACE}::AuditStream", stream_id), "attrs": attrs, "parents": []}
    if isinstance(resource, Platform):
        return {"uid": uid(f"{NAMESPACE}::Platform", resource.ref), "attrs": {}, "parents": []}
    raise TypeError(f"not an access resource: {resource!r}")


def residency_owner(artifact: ArtifactFacts) -> tuple[Caller, ArtifactFacts]:
    """A stand-in owner and its artifact, for asking the export rules about residency only."""
    owned = ArtifactFacts(RESIDENCY_OWNER, artifact.labels, artifact.kind, RESIDENCY_OWNER)
    return Caller(RESIDENCY_OWNER, Role.MEMBER_USER, RESIDENCY_OWNER), owned


def access_entities(caller: Caller, resource: AccessResource) -> tuple[Request, list[Entity]]:
    """The uids (principal, resource) of one access request, and the entities it needs."""
    principal = user_entity(caller)
    target = resource_entity(resource)
    entities = [principal, target]
    for member in {caller.member, getattr(resource, "member", None)}:
        if isinstance(member, str):
            entities.append({"uid": uid(MEMBER_TYPE, member), "attrs": {}, "parents": []})
    return {"principal": principal["uid"], "resource": target["uid"]}, entities


# --- the words of an explanation -------------------------------------------------------


def describe_artifact(kind: ArtifactKind, ref: str | None) -> str:
    """``dataset ds-1`` / ``model ax-k1``, or ``the dataset`` when unnamed."""
    return f"{kind.value} {ref}" if ref else f"the {kind.value}"


def label_words(prefix: str, name: str, labels: Labels) -> dict[str, str]:
    """Placeholder values for the labels of an input or artifact."""
    return {
        prefix: name,
        f"{prefix}.allowed_regions": ", ".join(sorted(labels.allowed_regions)) or "no region",
        f"{prefix}.classification": labels.classification.text,
        f"{prefix}.jurisdiction": labels.jurisdiction,
    }


def pool_words(pool: PoolFacts) -> dict[str, str]:
    """Placeholder values for a pool."""
    return {
        "pool": pool.name,
        "pool.region": pool.region,
        "pool.jurisdiction": pool.jurisdiction,
        "pool.max_classification": pool.max_classification.text,
    }


def destination_words(destination: Destination) -> dict[str, str]:
    """Placeholder values for an export destination."""
    return {
        "destination.region": destination.region,
        "destination.jurisdiction": destination.jurisdiction,
        "destination.max_classification": destination.max_classification.text,
    }


def access_words(caller: Caller, resource: AccessResource) -> dict[str, str]:
    """Placeholder values for an access request."""
    words = {
        "principal": f"user {caller.user_id}",
        "principal.role": caller.role.value,
        "principal.member": caller.member or "(none)",
    }
    if isinstance(resource, ArtifactFacts):
        words.update(
            label_words("artifact", describe_artifact(resource.kind, resource.ref), resource.labels)
        )
        words["resource"] = words["artifact"]
    elif isinstance(resource, JobFacts):
        words["resource"] = f"job {resource.ref}"
    elif isinstance(resource, MemberRef):
        words["resource"] = f"member {resource.ref}"
    elif isinstance(resource, AuditStream):
        words["resource"] = f"the audit stream of {resource.member or 'the platform'}"
    else:
        words["resource"] = "the platform"
    words["resource.member"] = getattr(resource, "member", None) or "(none)"
    return words
