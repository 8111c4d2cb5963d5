"""Table-driven tests of the access rules: members act on their own objects, auditors read,
platform admins administer. Each denial names the rule (or the permits that did not match)."""

from __future__ import annotations

import pytest
from policy_builders import dataset, labels, model, user

from policies import (
    AccessRequest,
    AccessResource,
    Action,
    AuditStream,
    Caller,
    Destination,
    JobFacts,
    MemberRef,
    Platform,
    PolicyEngine,
    Role,
    authorize,
)

ALICE = user("m-kt", Role.MEMBER_USER, "alice")
KT_ADMIN = user("m-kt", Role.MEMBER_ADMIN, "kt-admin")
BOB = user("m-snu", Role.MEMBER_USER, "bob")
ADMIN = Caller("root", Role.PLATFORM_ADMIN)
AUDITOR = Caller("audit", Role.AUDITOR)
KT_JOB = JobFacts("j-1", "m-kt")
KT_DATA = dataset("ds-1", labels(), member="m-kt")
AX_K1 = model("ax-k1", labels())
NO_PERMIT = "no permit matched"

TABLE: list[tuple[str, Caller, Action, AccessResource, str | None]] = [
    # (case, caller, action, resource, denying rule id or NO_PERMIT or None for allowed)
    ("member submits own job", ALICE, Action.SUBMIT, KT_JOB, None),
    ("member submits another member's job", BOB, Action.SUBMIT, KT_JOB, "access.tenant-isolation"),
    ("auditor cannot submit", AUDITOR, Action.SUBMIT, KT_JOB, "access.auditor.read-only"),
    ("platform admin does not submit for members", ADMIN, Action.SUBMIT, KT_JOB, NO_PERMIT),
    ("member cancels own job", ALICE, Action.CANCEL, KT_JOB, None),
    ("admin cancels any job", ADMIN, Action.CANCEL, KT_JOB, None),
    ("other member cannot cancel", BOB, Action.CANCEL, KT_JOB, "access.tenant-isolation"),
    ("member reads own job", ALICE, Action.READ, KT_JOB, None),
    ("auditor reads jobs", AUDITOR, Action.READ, KT_JOB, None),
    ("member reads own dataset", ALICE, Action.READ, KT_DATA, None),
    ("other member cannot read dataset", BOB, Action.READ, KT_DATA, "access.tenant-isolation"),
    ("auditor does not read member data", AUDITOR, Action.READ, KT_DATA, NO_PERMIT),
    ("admin does not read member data", ADMIN, Action.READ, KT_DATA, NO_PERMIT),
    ("any member reads the platform model", BOB, Action.READ, AX_K1, None),
    ("member admin manages own users", KT_ADMIN, Action.MANAGE_USERS, MemberRef("m-kt"), None),
    ("member user cannot manage users", ALICE, Action.MANAGE_USERS, MemberRef("m-kt"), NO_PERMIT),
    (
        "member admin of another member",
        KT_ADMIN,
        Action.MANAGE_USERS,
        MemberRef("m-snu"),
        NO_PERMIT,
    ),
    ("admin manages any member's users", ADMIN, Action.MANAGE_USERS, MemberRef("m-snu"), None),
    ("member admin reads own usage", KT_ADMIN, Action.READ_USAGE, MemberRef("m-kt"), None),
    ("auditor reads usage", AUDITOR, Action.READ_USAGE, MemberRef("m-kt"), None),
    ("admin registers members", ADMIN, Action.MANAGE_MEMBERS, Platform(), None),
    ("admin sets quotas", ADMIN, Action.MANAGE_QUOTAS, Platform(), None),
    ("admin registers pools", ADMIN, Action.MANAGE_POOLS, Platform(), None),
    ("admin changes policies", ADMIN, Action.MANAGE_POLICIES, Platform(), None),
    ("member admin cannot set quotas", KT_ADMIN, Action.MANAGE_QUOTAS, Platform(), NO_PERMIT),
    (
        "auditor cannot change pools",
        AUDITOR,
        Action.MANAGE_POOLS,
        Platform(),
        "access.auditor.read-only",
    ),
    ("auditor reads every stream", AUDITOR, Action.READ_AUDIT, AuditStream("m-snu"), None),
    ("auditor reads the platform stream", AUDITOR, Action.READ_AUDIT, AuditStream(), None),
    ("auditor exports audit", AUDITOR, Action.EXPORT_AUDIT, AuditStream(), None),
    ("admin reads audit", ADMIN, Action.READ_AUDIT, AuditStream("m-kt"), None),
    ("member reads own stream", ALICE, Action.READ_AUDIT, AuditStream("m-kt"), None),
    (
        "member cannot read another stream",
        ALICE,
        Action.READ_AUDIT,
        AuditStream("m-snu"),
        "access.tenant-isolation",
    ),
    ("member cannot read the platform stream", ALICE, Action.READ_AUDIT, AuditStream(), NO_PERMIT),
    ("member cannot export audit", ALICE, Action.EXPORT_AUDIT, AuditStream("m-kt"), NO_PERMIT),
]


@pytest.mark.parametrize(
    ("case", "caller", "action", "resource", "denied_by"), TABLE, ids=[c[0] for c in TABLE]
)
def test_access_rules(
    engine: PolicyEngine,
    case: str,
    caller: Caller,
    action: Action,
    resource: AccessResource,
    denied_by: str | None,
) -> None:
    decision = engine.authorize(caller, action, resource)
    assert decision.errors == (), decision
    if denied_by is None:
        assert decision.allowed, decision
        assert decision.policy_ids
        return
    assert not decision.allowed
    if denied_by == NO_PERMIT:
        assert decision.reasons[0].startswith(NO_PERMIT)
        assert set(decision.policy_ids) == set(engine.policy_set.permits_for(action.value))
    else:
        assert decision.policy_ids[0] == denied_by
        assert decision.reasons[0].startswith(f"{denied_by}: ")
    assert all("{" not in reason for reason in decision.reasons)


def test_export_needs_access_and_residency(engine: PolicyEngine) -> None:
    seoul = Destination("kr-seoul", "KR")
    abroad = Destination("us-east-1", "US")
    assert engine.authorize(ALICE, Action.EXPORT, KT_DATA, destination=seoul).allowed
    other = engine.authorize(BOB, Action.EXPORT, KT_DATA, destination=seoul)
    assert other.policy_ids == ("access.tenant-isolation",)
    both = engine.authorize(BOB, Action.EXPORT, KT_DATA, destination=abroad)
    assert set(both.policy_ids) == {"access.tenant-isolation", "residency.export.region"}
    auditor = engine.export(KT_DATA, "kr-seoul", "KR", caller=AUDITOR)
    assert "access.auditor.read-only" in auditor.policy_ids
    assert engine.export(KT_DATA, "kr-seoul", "KR", caller=ALICE).allowed


def test_export_without_destination_is_a_denial(engine: PolicyEngine) -> None:
    decision = engine.authorize(ALICE, Action.EXPORT, KT_DATA)
    assert not decision.allowed
    assert decision.errors and "destination" in decision.errors[0]


def test_authorize_batch_keeps_order(engine: PolicyEngine) -> None:
    requests = [AccessRequest(caller, action, resource) for _, caller, action, resource, _ in TABLE]
    batched = engine.authorize_batch(requests)
    single = [engine.authorize(r.caller, r.action, r.resource) for r in requests]
    assert batched == single
    expected = [denied is None for *_, denied in TABLE]
    assert [d.allowed for d in batched] == expected


def test_module_level_authorize() -> None:
    assert authorize(ALICE, Action.SUBMIT, KT_JOB).allowed


def test_a_request_the_schema_does_not_allow_is_a_denial(engine: PolicyEngine) -> None:
    decision = engine.authorize(ALICE, Action.SCHEDULE, KT_DATA)
    assert not decision.allowed
    assert decision.policy_ids == ("nuri.evaluation-error",)
    assert "not valid" in decision.errors[0]


def test_a_batch_may_describe_the_same_ids_differently(engine: PolicyEngine) -> None:
    # The same user before and after a role change, the same job id under two members: one
    # Cedar entity store cannot hold both, yet each request must be judged on its own facts.
    promoted = Caller("alice", Role.MEMBER_ADMIN, "m-kt")
    demoted = Caller("alice", Role.AUDITOR)
    requests = [
        AccessRequest(ALICE, Action.MANAGE_USERS, MemberRef("m-kt")),
        AccessRequest(promoted, Action.MANAGE_USERS, MemberRef("m-kt")),
        AccessRequest(demoted, Action.SUBMIT, KT_JOB),
        AccessRequest(ALICE, Action.SUBMIT, JobFacts("j-1", "m-snu")),
        AccessRequest(ALICE, Action.SUBMIT, KT_JOB),
    ]
    fresh = PolicyEngine.shipped(cache_size=0)
    decisions = fresh.authorize_batch(requests)
    assert [d.allowed for d in decisions] == [False, True, False, False, True]
    assert decisions == [fresh.authorize(r.caller, r.action, r.resource) for r in requests]
