"""The control plane's side of residency: facts from rows, decisions from ``policies``.

Enforcement points (ARCHITECTURE §5): submission (no allowed pool is a 422
``residency_denied`` naming the rules), the engine's input (each queued job's allowed pools
are filtered every cycle, so a relabelled input takes effect at once), placement (checked
again just before launch), running jobs (stopped when an input's new label forbids their
pool), and artifact export and download.

Base models carry labels too: A.X K1 and its presets are Korean-jurisdiction weights that may
be processed in Korean regions only; the student architectures are initialised from scratch
and may run anywhere. A model derived from A.X K1 inherits that through its effective label.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from sqlmodel import Session, col, select

from controlplane.db.models import Artifact, Dataset, PolicyVersion, Pool
from controlplane.errors import NuriError
from policies import (
    ArtifactFacts,
    ArtifactKind,
    Classification,
    Decision,
    Labels,
    PolicyEngine,
    PoolFacts,
    effective_label,
)

# Base model -> the jurisdiction whose regions may process it (None: any region).
# Every preset of workers.presets is one (a test keeps the two lists equal).
BASE_MODEL_JURISDICTION: dict[str, str | None] = {
    "axk1": "KR",
    "axk1-mini": "KR",
    "axk1-tiny": "KR",
    "student-70b": None,
    "student-8b": None,
    "student-mini": None,
    "student-tiny": None,
}


class ResidencyDenied(NuriError):
    status_code = 422
    code = "residency_denied"


class ExportDenied(NuriError):
    status_code = 403
    code = "residency_denied"


@lru_cache(maxsize=1)
def shipped_engine() -> PolicyEngine:
    return PolicyEngine.shipped()


# The active policy set, per database: refreshed from it at most every SYNC_INTERVAL_S (and
# at once after an admin change in this process). Compiled engines are kept by hash, so
# switching back and forth costs nothing and each keeps its decision cache.
SYNC_INTERVAL_S = 2.0
_lock = threading.Lock()
_engines: dict[str, PolicyEngine] = {}
_active: weakref.WeakKeyDictionary[Any, tuple[float, PolicyEngine | None]] = (
    weakref.WeakKeyDictionary()
)


def compile_version(row: PolicyVersion) -> PolicyEngine:
    with _lock:
        found = _engines.get(row.policy_set_hash)
    if found is None:
        found = PolicyEngine.from_text(row.policy_text, row.schema_text, f"v{row.id}")
        with _lock:
            _engines[row.policy_set_hash] = found
    return found


def sync(session: Session, force: bool = False) -> PolicyEngine:
    """The active policy set of the session's database (shipped until an admin activates a
    stored version), re-read when older than SYNC_INTERVAL_S."""
    bind = session.get_bind()
    now = time.monotonic()
    with _lock:
        hit = _active.get(bind)
    if hit is not None and not force and now - hit[0] < SYNC_INTERVAL_S:
        return hit[1] or shipped_engine()
    row = session.exec(select(PolicyVersion).where(col(PolicyVersion.active).is_(True))).first()
    found = compile_version(row) if row is not None else None
    with _lock:
        _active[bind] = (now, found)
    return found or shipped_engine()


def engine(session: Session) -> PolicyEngine:
    """The policy set that decides for this session's database right now."""
    return sync(session)


def pool_facts(pools: Iterable[Pool]) -> list[PoolFacts]:
    return [
        PoolFacts(
            name=p.name,
            region=p.region,
            jurisdiction=p.jurisdiction,
            max_classification=Classification.parse(p.max_classification),
        )
        for p in pools
    ]


def base_model_labels(model: str, pools: Sequence[PoolFacts]) -> Labels:
    juris = BASE_MODEL_JURISDICTION[model]
    regions = {p.region for p in pools if juris is None or p.jurisdiction == juris}
    # A model nobody may process anywhere yet still needs a region set: an impossible one.
    return Labels(jurisdiction=juris or "KR", allowed_regions=frozenset(regions or {"none"}))


def artifact_labels(session: Session, art: Artifact, seen: frozenset[str] = frozenset()) -> Labels:
    """An artifact's label now: the stricter of what was stored when it was written and what
    its lineage gives with the inputs' current labels (a relabelled input reaches it)."""
    stored = Labels.from_dict(art.labels)
    inputs = art.provenance.get("inputs", [])
    if art.id in seen or not inputs:
        return stored
    current: list[Labels] = [stored]
    for ref in inputs:
        kind, ident = ref.get("type"), ref.get("id")
        if kind == "dataset":
            ds = session.get(Dataset, ident)
            if ds is not None:
                current.append(Labels.from_dict(ds.labels))
        elif kind == "artifact":
            parent = session.get(Artifact, ident)
            if parent is not None:
                current.append(artifact_labels(session, parent, seen | {art.id}))
    return effective_label(current)


def registered_model(session: Session, member_id: str, ref: str) -> Dataset | None:
    """The member's model dataset named ``ref`` (id or name); another member's is unknown."""
    return session.exec(
        select(Dataset).where(
            Dataset.member_id == member_id,
            col(Dataset.kind) == "model",
            (Dataset.id == ref) | (Dataset.name == ref),
        )
    ).first()


def model_facts(
    session: Session, member_id: str, model: str, pools: Sequence[PoolFacts]
) -> ArtifactFacts | None:
    """A model a job names (base preset, the member's artifact or registered model)."""
    if model in BASE_MODEL_JURISDICTION:
        return ArtifactFacts(
            ref=f"model:{model}", labels=base_model_labels(model, pools), kind=ArtifactKind.MODEL
        )
    if model.startswith("art_"):
        art = session.get(Artifact, model)
        if art is not None and art.member_id == member_id:
            return ArtifactFacts(
                ref=art.id,
                labels=artifact_labels(session, art),
                kind=ArtifactKind.MODEL,
                member=member_id,
            )
        return None
    ds = registered_model(session, member_id, model)
    if ds is None:
        return None
    return ArtifactFacts(
        ref=ds.id, labels=Labels.from_dict(ds.labels), kind=ArtifactKind.MODEL, member=member_id
    )


def input_facts(
    session: Session,
    member_id: str,
    model: str,
    input_ids: Sequence[str],
    pools: Sequence[PoolFacts],
    teacher: str | None = None,
) -> list[ArtifactFacts]:
    """Everything a job reads, the model (and a distillation's teacher) included.

    ``input_ids`` are datasets, or artifacts (``art_...``: an endpoint's LoRA adapters)."""
    facts: list[ArtifactFacts] = []
    for name in (model, teacher):
        found = model_facts(session, member_id, name, pools) if name else None
        if found is not None:
            facts.append(found)
    for ident in input_ids:
        if ident.startswith("art_"):
            # An artifact read as an input (an endpoint's LoRA adapters): its own labels.
            art = session.get(Artifact, ident)
            if art is not None and art.member_id == member_id:
                facts.append(
                    ArtifactFacts(
                        ref=art.id,
                        labels=artifact_labels(session, art),
                        kind=ArtifactKind.MODEL,
                        member=member_id,
                    )
                )
            continue
        ds = session.get(Dataset, ident)
        if ds is not None:
            facts.append(
                ArtifactFacts(
                    ref=ds.id,
                    labels=Labels.from_dict(ds.labels),
                    kind=ArtifactKind.of(ds.kind),
                    member=member_id,
                )
            )
    return facts


def where_may_run(
    session: Session,
    member_id: str,
    model: str,
    input_ids: Sequence[str],
    pools: Sequence[Pool] | None = None,
) -> dict[str, Decision]:
    all_pools = pool_facts(session.exec(select(Pool)).all())
    chosen = pool_facts(pools) if pools is not None else all_pools
    facts = input_facts(session, member_id, model, input_ids, all_pools)
    return engine(session).allowed_pools(facts, chosen)


def denial_details(decisions: dict[str, Decision]) -> dict[str, Any]:
    hashes = sorted({d.policy_set_hash for d in decisions.values()})
    return {
        "pools": {name: d.to_dict() for name, d in sorted(decisions.items())},
        "policy_set_hash": hashes[0] if len(hashes) == 1 else hashes,
    }


def effective_output_labels(
    session: Session,
    member_id: str,
    model: str,
    input_ids: Sequence[str],
    teacher: str | None = None,
) -> Labels:
    """The label of what a job writes: computed from all its inputs, the model included."""
    pools = pool_facts(session.exec(select(Pool)).all())
    return effective_label(
        f.labels for f in input_facts(session, member_id, model, input_ids, pools, teacher)
    )


def allowed_pools_by_job(session: Session, jobs: Sequence[Any]) -> dict[str, set[str]]:
    """For the engine's input: the pools each job's data and model may enter, right now.

    Evaluated every cycle (decisions are cached by facts, so unchanged labels cost a lookup),
    which is what makes a relabelled input take effect on queued jobs at once.
    """
    pools = pool_facts(session.exec(select(Pool)).all())
    facts = {
        j.id: input_facts(session, j.member_id, j.model, j.inputs, pools, j.teacher) for j in jobs
    }
    decided = engine(session).allowed_pools_for_jobs(facts, pools)
    return {job: {p for p, d in per_pool.items() if d.allowed} for job, per_pool in decided.items()}


def placement(session: Session, job: Any, pool_name: str) -> Decision:
    """May this job (its current inputs' labels) run on ``pool_name``?"""
    pools = pool_facts(session.exec(select(Pool)).all())
    target = [p for p in pools if p.name == pool_name]
    facts = input_facts(session, job.member_id, job.model, job.inputs, pools, job.teacher)
    if not target:
        return Decision(allowed=False, policy_ids=(), reasons=(f"unknown pool {pool_name}",))
    return engine(session).placement(facts, target[0])
