"""The demo consortium (``nuri up --demo``): idempotent, safe to run on every start.

Six members of the kinds a national consortium has, pools at two Korean sites and one foreign
site, quotas that sum to each pool's capacity, budgets for the current quarter and datasets
whose residency labels make the policy engine's work visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.api import schemas
from controlplane.auth import Principal, default_scopes
from controlplane.db.models import (
    Budget,
    Classification,
    Dataset,
    Member,
    Pool,
    Quota,
    Role,
    User,
)
from controlplane.services import datasets, inventory, tenancy
from workers.staging import fingerprint

MEMBERS = (
    ("arirang-telecom", "Arirang Telecom (affiliate telecom)", "telecom", "KR"),
    ("hanbit-memory", "Hanbit Memory (memory-chip maker)", "chipmaker", "KR"),
    ("hangang-university", "Hangang University", "university", "KR"),
    ("national-ai-institute", "National AI Research Institute", "institute", "KR"),
    ("dokkaebi-ai", "Dokkaebi AI (start-up)", "startup", "KR"),
    ("pacific-research", "Pacific Research Lab (foreign partner)", "foreign", "US"),
)

# name, gpu, GiB, per node, nodes, site, region, jurisdiction, max classification, domains
POOLS = (
    (
        "kr-seoul-h200",
        "H200",
        141,
        8,
        8,
        "Seoul",
        "kr-seoul",
        "KR",
        "classified",
        ["seoul-nvl-a", "seoul-nvl-b"],
    ),
    (
        "kr-daejeon-h100",
        "H100",
        80,
        8,
        4,
        "Daejeon",
        "kr-daejeon",
        "KR",
        "sensitive",
        ["daejeon-ib-a"],
    ),
    ("us-west-h100", "H100", 80, 8, 2, "Oregon", "us-west", "US", "open", ["uswest-ib-a"]),
)

# member -> pool -> (nominal, borrowing limit, lending limit); nominal sums to capacity.
QUOTAS = {
    "arirang-telecom": {"kr-seoul-h200": (24, 16, 16), "us-west-h100": (0, 8, 0)},
    "hanbit-memory": {"kr-seoul-h200": (16, 8, 8)},
    "hangang-university": {"kr-seoul-h200": (8, 16, 8), "kr-daejeon-h100": (8, 8, 8)},
    "national-ai-institute": {"kr-seoul-h200": (8, 8, 8), "kr-daejeon-h100": (16, 8, 16)},
    "dokkaebi-ai": {"kr-seoul-h200": (8, 8, 8), "kr-daejeon-h100": (8, 8, 8)},
    "pacific-research": {"us-west-h100": (16, 0, 8)},
}

BUDGET_GPU_HOURS = {
    "arirang-telecom": 40_000.0,
    "hanbit-memory": 25_000.0,
    "hangang-university": 12_000.0,
    "national-ai-institute": 20_000.0,
    "dokkaebi-ai": 8_000.0,
    "pacific-research": 10_000.0,
}

KR = ["kr-seoul", "kr-daejeon"]
DATASETS = (
    (
        "arirang-telecom",
        "call-center-transcripts-ko",
        "s3://arirang/cc-transcripts/",
        {
            "jurisdiction": "KR",
            "allowed_regions": KR,
            "classification": "sensitive",
            "personal_info": True,
            "transfer_basis": None,
        },
    ),
    (
        "hanbit-memory",
        "fab-yield-logs",
        "s3://hanbit/fab-yield/",
        {
            "jurisdiction": "KR",
            "allowed_regions": ["kr-seoul"],
            "classification": "classified",
            "personal_info": False,
            "transfer_basis": None,
        },
    ),
    (
        "hangang-university",
        "korean-web-corpus",
        "s3://hangang/ko-web/",
        {
            "jurisdiction": "KR",
            "allowed_regions": [*KR, "us-west"],
            "classification": "open",
            "personal_info": False,
            "transfer_basis": None,
        },
    ),
    (
        "national-ai-institute",
        "public-admin-docs",
        "s3://nai/admin-docs/",
        {
            "jurisdiction": "KR",
            "allowed_regions": KR,
            "classification": "sensitive",
            "personal_info": False,
            "transfer_basis": None,
        },
    ),
    (
        "dokkaebi-ai",
        "customer-support-qa",
        "s3://dokkaebi/support-qa/",
        {
            "jurisdiction": "KR",
            "allowed_regions": [*KR, "us-west"],
            "classification": "open",
            "personal_info": True,
            "transfer_basis": "consent",
        },
    ),
    (
        "pacific-research",
        "english-instructions",
        "s3://pacific/instructions/",
        {
            "jurisdiction": "US",
            "allowed_regions": ["us-west", *KR],
            "classification": "open",
            "personal_info": False,
            "transfer_basis": None,
        },
    ),
)


# Small real datasets shipped with Nuri (controlplane/demo_data, original text written for
# the demo): the demo's jobs train and infer on these out of the box. member, name, file,
# description, labels.
SHIPPED = (
    (
        "hangang-university",
        "ko-encyclopedia",
        "ko-text.jsonl",
        "Korean encyclopedia-style prose (plain text)",
        {"jurisdiction": "KR", "allowed_regions": [*KR, "us-west"], "classification": "open"},
    ),
    (
        "hangang-university",
        "ko-en-prompts",
        "prompts.jsonl",
        "Korean and English prompts for batch inference",
        {"jurisdiction": "KR", "allowed_regions": [*KR, "us-west"], "classification": "open"},
    ),
    (
        "dokkaebi-ai",
        "ko-support-chat",
        "ko-chat.jsonl",
        "Korean customer-support and assistant dialogues (chat, multi-turn)",
        {"jurisdiction": "KR", "allowed_regions": KR, "classification": "sensitive"},
    ),
    (
        "arirang-telecom",
        "ko-assistant-chat",
        "ko-chat.jsonl",
        "Korean assistant dialogues (chat, multi-turn)",
        {"jurisdiction": "KR", "allowed_regions": KR, "classification": "sensitive"},
    ),
    (
        "pacific-research",
        "en-assistant-chat",
        "en-chat.jsonl",
        "English assistant dialogues (chat, multi-turn)",
        {"jurisdiction": "US", "allowed_regions": ["us-west", *KR], "classification": "open"},
    ),
    (
        "pacific-research",
        "en-encyclopedia",
        "en-text.jsonl",
        "English encyclopedia-style prose (plain text)",
        {"jurisdiction": "US", "allowed_regions": ["us-west", *KR], "classification": "open"},
    ),
    (
        "national-ai-institute",
        "ko-en-prompts",
        "prompts.jsonl",
        "Korean and English prompts for batch inference",
        {"jurisdiction": "KR", "allowed_regions": KR, "classification": "open"},
    ),
)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    members: int
    pools: int
    created: int


def current_quarter(now: datetime) -> str:
    return f"{now.year}-Q{(now.month - 1) // 3 + 1}"


def seed(engine: Engine, admin_user_id: str, now: datetime) -> DemoSummary:
    """Create whatever part of the demo consortium is missing; returns how much was created."""
    admin = Principal(
        user_id=admin_user_id,
        member_id=None,
        role=Role.PLATFORM_ADMIN,
        token_id="bootstrap",
        scopes=frozenset(default_scopes(Role.PLATFORM_ADMIN)),
    )
    created = 0
    with Session(engine, expire_on_commit=False) as s:
        for name, display, kind, country in MEMBERS:
            if not s.exec(select(Member).where(Member.name == name)).first():
                tenancy.create_member(
                    s,
                    admin,
                    schemas.MemberCreate(
                        name=name, display_name=display, kind=kind, country=country
                    ),
                )
                created += 1
            member = s.exec(select(Member).where(Member.name == name)).one()
            domain = name.split("-")[0]
            for local, role in (("admin", Role.MEMBER_ADMIN), ("researcher", Role.MEMBER_USER)):
                email = f"{local}@{domain}.example"
                if not s.exec(select(User).where(User.email == email)).first():
                    s.add(
                        User(
                            member_id=member.id,
                            email=email,
                            name=f"{display.split(' (')[0]} {local}",
                            role=role.value,
                        )
                    )
                    created += 1
        if not s.exec(select(User).where(User.email == "auditor@nuri.local")).first():
            s.add(
                User(email="auditor@nuri.local", name="Consortium auditor", role=Role.AUDITOR.value)
            )
            created += 1
        s.commit()

        for name, gpu, mem, per_node, nodes, site, region, juris, max_cls, domains in POOLS:
            if not s.exec(select(Pool).where(Pool.name == name)).first():
                inventory.create_pool(
                    s,
                    admin,
                    schemas.PoolCreate(
                        name=name,
                        gpu_model=gpu,
                        gpu_memory_gib=mem,
                        gpus_per_node=per_node,
                        site=site,
                        region=region,
                        jurisdiction=juris,
                        max_classification=Classification(max_cls),
                        interconnect_domains=domains,
                        node_count=nodes,
                    ),
                )
                created += 1

        for member_name, per_pool in QUOTAS.items():
            member = s.exec(select(Member).where(Member.name == member_name)).one()
            for pool_name, (nominal, borrow, lend) in per_pool.items():
                pool = s.exec(select(Pool).where(Pool.name == pool_name)).one()
                if not s.exec(
                    select(Quota).where(Quota.member_id == member.id, Quota.pool_id == pool.id)
                ).first():
                    inventory.create_quota(
                        s,
                        admin,
                        schemas.QuotaCreate(
                            member=member.id,
                            pool=pool.id,
                            nominal_gpus=nominal,
                            borrowing_limit=borrow,
                            lending_limit=lend,
                        ),
                    )
                    created += 1

        period = current_quarter(now)
        for member_name, hours in BUDGET_GPU_HOURS.items():
            member = s.exec(select(Member).where(Member.name == member_name)).one()
            if not s.exec(
                select(Budget).where(Budget.member_id == member.id, Budget.period == period)
            ).first():
                inventory.create_budget(
                    s, admin, schemas.BudgetCreate(member=member.id, period=period, gpu_hours=hours)
                )
                created += 1

        for member_name, ds_name, uri, labels in DATASETS:
            member = s.exec(select(Member).where(Member.name == member_name)).one()
            if not s.exec(
                select(Dataset).where(Dataset.member_id == member.id, Dataset.name == ds_name)
            ).first():
                s.add(
                    Dataset(
                        member_id=member.id,
                        name=ds_name,
                        uri=uri,
                        labels=labels,
                        description=f"demo dataset of {member_name}",
                    )
                )
                created += 1
        for member_name, ds_name, filename, description, shipped_labels in SHIPPED:
            member = s.exec(select(Member).where(Member.name == member_name)).one()
            if not s.exec(
                select(Dataset).where(Dataset.member_id == member.id, Dataset.name == ds_name)
            ).first():
                path = datasets.SHIPPED_DATA / filename
                fp = fingerprint(path.as_uri())
                s.add(
                    Dataset(
                        member_id=member.id,
                        name=ds_name,
                        uri=path.as_uri(),
                        labels={"personal_info": False, "transfer_basis": None, **shipped_labels},
                        description=description,
                        sha256=fp.sha256,
                        size_bytes=fp.size_bytes,
                    )
                )
                created += 1
        s.commit()
    return DemoSummary(members=len(MEMBERS), pools=len(POOLS), created=created)
