"""The Kubernetes inventory adapter: list and watch Nodes, apply the core's decisions.

One loop: list the (selected) Nodes and reconcile the whole registry against them, then watch
from the list's resourceVersion and reconcile one node per event; a watch that expires or is
answered 410 Gone starts over with a list. Restart = reconcile: nothing is kept in memory that
the next list does not rebuild.

Writes follow the house rule of no network call inside a transaction: the client is read
first, then each decision is applied in its own short transaction, guarded on what the core
saw (a node added twice is refused by the unique name, a quarantine only moves a node that is
not quarantined yet), with its audit event in the same transaction. Events are written by the
system (no actor) in the platform stream; a quarantine is also written to the stream of every
member whose running job holds GPUs on the node, which is how those owners are told.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as _k8s_config
from kubernetes import watch as _k8s_watch
from kubernetes.client.exceptions import ApiException
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane.audit import log as audit_log
from controlplane.audit.chain import PLATFORM_STREAM as PLATFORM
from controlplane.db.models import Node, NodeStatus, Pool
from controlplane.db.types import utcnow
from controlplane.k8s import core, rayclusters
from controlplane.scheduler.snapshot import held_assignments
from controlplane.services import catalog

log = logging.getLogger(__name__)
# Parts of the client ship without annotations: used through Any, checked by the tests.
k8s_config: Any = _k8s_config
k8s_watch: Any = _k8s_watch


def api_client(mode: str, kubeconfig: Path | None = None, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``incluster`` or ``kubeconfig`` mode."""
    if mode == "incluster":
        cfg = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=cfg)
        return k8s_client.ApiClient(cfg)
    if mode == "kubeconfig":
        return k8s_config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context
        )
    raise ValueError(f"the Kubernetes inventory is {mode!r}: nothing to connect to")


@dataclass
class Report:
    """What one list or watch event changed (for logs and tests)."""

    applied: list[core.Decision] = field(default_factory=list)
    skipped: list[core.Decision] = field(default_factory=list)


class NodeInventory:
    """Keeps the registry's nodes in step with a cluster's Nodes (see the module docstring)."""

    def __init__(
        self,
        db: Engine,
        api: Any,
        *,
        pool_label: str,
        selector: str = "",
        tolerated_taints: Iterable[str] = core.DEFAULT_TOLERATED_TAINTS,
        watch_timeout_s: int = 300,
    ) -> None:
        self.db = db
        self.api: Any = api
        self.core_api = k8s_client.CoreV1Api(api)
        self.pool_label = pool_label
        self.selector_text = selector
        self.selector = core.parse_selector(selector)
        self.tolerated = tuple(tolerated_taints)
        self.watch_timeout_s = watch_timeout_s
        self.resource_version: str | None = None
        self._watch: Any = None
        self._stopping = False

    # --- reading --------------------------------------------------------------------------

    def _selected(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return core.matches_selector(labels, self.selector)

    def _observe(self, obj: Mapping[str, Any]) -> core.ObservedNode:
        return core.observe(obj, self.pool_label, self.tolerated)

    def _registry(
        self, session: Session, names: Iterable[str] | None = None
    ) -> tuple[list[core.RegisteredNode], dict[str, core.PoolFacts]]:
        pools = session.exec(select(Pool)).all()
        by_id = {p.id: p for p in pools}
        stmt = select(Node)
        if names is not None:
            stmt = stmt.where(col(Node.name).in_(list(names)))
        registered = [
            core.RegisteredNode(
                name=n.name,
                pool=by_id[n.pool_id].name,
                domain=n.domain,
                gpus=n.gpus,
                status=n.status,
                source=n.source,
                observed=n.observed,
            )
            for n in session.exec(stmt).all()
            if n.pool_id in by_id
        ]
        facts = {
            p.name: core.PoolFacts(
                p.name,
                p.region,
                p.jurisdiction,
                p.gpus_per_node,
                tuple(p.interconnect_domains),
                p.gpu_model,
            )
            for p in pools
        }
        return registered, facts

    # --- list and watch -------------------------------------------------------------------

    def resync(self) -> Report:
        """List the Nodes and reconcile the whole registry (removals included)."""
        listing = self.core_api.list_node(label_selector=self.selector_text or None)
        raw = self.api.sanitize_for_serialization(listing)
        self.resource_version = (raw.get("metadata") or {}).get("resourceVersion")
        observed = [self._observe(o) for o in raw.get("items") or () if self._selected(o)]
        with Session(self.db) as s:
            registered, pools = self._registry(s)
        return self.apply(core.reconcile(observed, registered, pools, complete=True))

    def on_event(self, kind: str, obj: Mapping[str, Any]) -> Report:
        """Reconcile the one node a watch event is about."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        with Session(self.db) as s:
            registered, pools = self._registry(s, [name])
        if kind == "DELETED" or not self._selected(obj):
            # Gone, or no longer selected: like absent from a full list of this one node.
            plan = core.reconcile([], registered, pools, complete=True)
        else:
            plan = core.reconcile([self._observe(obj)], registered, pools, complete=False)
        return self.apply(plan)

    def watch(self, on_report: Callable[[Report], None] | None = None) -> None:
        """Watch from the last list until the stream ends (timeout, 410 Gone or ``stop``)."""
        self._watch = k8s_watch.Watch()
        self._stopping = False
        try:
            for event in self._watch.stream(
                self.core_api.list_node,
                label_selector=self.selector_text or None,
                resource_version=self.resource_version,
                timeout_seconds=self.watch_timeout_s,
            ):
                kind = event["type"]
                if kind == "ERROR":
                    self.resource_version = None  # usually 410 Gone: list again
                    return
                obj = self.api.sanitize_for_serialization(event["object"])
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = version
                if kind == "BOOKMARK":
                    continue
                report = self.on_event(kind, obj)
                if on_report is not None:
                    on_report(report)
        except ApiException as exc:
            if exc.status != 410:
                raise
            self.resource_version = None
        except Exception:
            # ``Watch.stop`` shuts the socket down under the blocked read: that is the end.
            if not self._stopping:
                raise
        finally:
            self._watch = None

    def run(
        self,
        stop: threading.Event,
        retry_s: float = 5.0,
        active: Callable[[], bool] = lambda: True,
        resync_s: float = 600.0,
    ) -> None:
        """List, then watch, until ``stop`` is set; errors are logged and retried.

        ``active`` gates the work (the scheduler passes "I hold the leader lease"), so that
        standby schedulers do not write the same changes; a watch in progress when the lease
        moves ends at its timeout, and writes stay idempotent meanwhile. A full list every
        ``resync_s`` repairs whatever a lost write or a missed event left behind.
        """
        listed_at = float("-inf")
        while not stop.is_set():
            if not active():
                self.resource_version = None  # list afresh when leading again
                stop.wait(retry_s)
                continue
            try:
                if self.resource_version is None or time.monotonic() - listed_at > resync_s:
                    self.resync()
                    listed_at = time.monotonic()
                self.watch()
            except Exception:
                log.exception("kubernetes inventory: will list again in %.0fs", retry_s)
                self.resource_version = None
                stop.wait(retry_s)

    def stop_watch(self) -> None:
        """End a ``watch`` running in another thread (it returns promptly)."""
        self._stopping = True
        w = self._watch
        if w is not None:
            w.stop()

    # --- writing --------------------------------------------------------------------------

    def apply(self, plan: core.Plan) -> Report:
        report = Report()
        for decision in plan.decisions:
            if isinstance(decision, core.Ignore):
                log.debug("kubernetes inventory: %s ignored (%s)", decision.name, decision.reason)
                report.skipped.append(decision)
                continue
            with Session(self.db) as s:
                try:
                    done = _APPLY[type(decision)](s, decision)
                    if done:
                        s.commit()
                        catalog.invalidate(s)
                    else:
                        s.rollback()
                except IntegrityError:
                    s.rollback()  # another reconciler added it first
                    done = False
            (report.applied if done else report.skipped).append(decision)
            if isinstance(decision, core.Quarantine) or (
                isinstance(decision, core.Add) and decision.reasons
            ):
                log.warning("kubernetes inventory: %s quarantined: %s", decision.name, decision)
        return report


def _record(s: Session, action: str, node: Node, details: dict[str, Any]) -> None:
    audit_log.record(
        s, None, action, "node", node.id, stream=PLATFORM, now=utcnow(), details=details
    )


def _add(s: Session, d: core.Add) -> bool:
    pool = s.exec(select(Pool).where(Pool.name == d.pool)).one()
    if d.domain not in pool.interconnect_domains:
        pool.interconnect_domains = [*pool.interconnect_domains, d.domain]
        s.add(pool)
    row = Node(
        name=d.name,
        pool_id=pool.id,
        domain=d.domain,
        gpus=d.gpus,
        status=d.status,
        source=core.SOURCE,
        quarantine_reason="; ".join(d.reasons)[:1000] or None,
        observed=dict(d.observed) if d.observed is not None else None,
    )
    s.add(row)
    s.flush()
    details = {
        "pool": d.pool,
        "domain": d.domain,
        "gpus": d.gpus,
        "status": d.status,
        "observed": row.observed,
    }
    _record(s, "node.k8s.add", row, details)
    if d.reasons:
        _record(s, "node.quarantine", row, {"reasons": list(d.reasons)})
    return True


def _update(s: Session, d: core.Update) -> bool:
    row = s.exec(select(Node).where(Node.name == d.name)).first()
    if row is None:
        return False
    # Only what still differs: another reconciler (or an earlier try) may have written it.
    changes = {k: v for k, v in d.changes.items() if getattr(row, k) != v}
    if "status" in changes and row.status == NodeStatus.QUARANTINED.value:
        changes.pop("status")  # quarantined since the core looked: the quarantine wins
    if "domain" in changes:
        pool = s.get(Pool, row.pool_id)
        if pool is not None and changes["domain"] not in pool.interconnect_domains:
            pool.interconnect_domains = [*pool.interconnect_domains, changes["domain"]]
            s.add(pool)
    if not changes:
        return False
    for key, value in changes.items():
        setattr(row, key, value)
    s.add(row)
    _record(s, "node.k8s.update", row, changes)
    return True


def _quarantine(s: Session, d: core.Quarantine) -> bool:
    reason = "; ".join(d.reasons)[:1000]
    moved = s.execute(
        update(Node)
        .where(col(Node.name) == d.name, col(Node.status) != NodeStatus.QUARANTINED.value)
        .values(status=NodeStatus.QUARANTINED.value, quarantine_reason=reason)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    row = s.exec(select(Node).where(Node.name == d.name)).one()
    details: dict[str, Any] = {"node": d.name, "reasons": list(d.reasons)}
    _record(s, "node.quarantine", row, details)
    owners: dict[str, list[str]] = {}
    for job in held_assignments(s):
        if any(str(n) == d.name for n, _ in job.assignment):
            owners.setdefault(job.member_id, []).append(job.id)
    for member_id, jobs in sorted(owners.items()):
        audit_log.record(
            s,
            None,
            "node.quarantine",
            "node",
            row.id,
            stream=member_id,
            now=utcnow(),
            details={**details, "jobs": sorted(jobs)},
        )
    return True


def _remove(s: Session, d: core.Remove) -> bool:
    row = s.exec(select(Node).where(Node.name == d.name, Node.source == core.SOURCE)).first()
    if row is None:
        return False
    if any(str(n) == d.name for j in held_assignments(s) for n, _ in j.assignment):
        # Work still holds GPUs there: keep the row (as down) until it is torn down; the next
        # list removes it.
        if row.status in (NodeStatus.DOWN.value, NodeStatus.QUARANTINED.value):
            return False
        row.status = NodeStatus.DOWN.value
        s.add(row)
        _record(s, "node.k8s.update", row, {"status": row.status, "left_cluster": True})
        return True
    _record(s, "node.k8s.remove", row, {"name": row.name})
    s.delete(row)
    return True


_APPLY: dict[type, Callable[[Session, Any], bool]] = {
    core.Add: _add,
    core.Update: _update,
    core.Quarantine: _quarantine,
    core.Remove: _remove,
}


@dataclass
class Started:
    """What :func:`start` started: ``stop`` ends it, ``pause_reason`` is the scheduler's
    question to the RayCluster watch (always None when no RayCluster is named)."""

    stop: Callable[[], None]
    pause_reason: Callable[[], str | None] = lambda: None


def start(
    settings: Any, db: Engine, active: Callable[[], bool], retry_s: float = 5.0
) -> Started | None:
    """Start the inventory loop in a daemon thread when ``NURI_K8S_INVENTORY`` is not off,
    and the RayCluster watch when ``NURI_K8S_RAYCLUSTER`` names one (None when off)."""
    if settings.k8s_inventory == "off":
        return None
    api = api_client(settings.k8s_inventory, settings.k8s_kubeconfig, settings.k8s_context)
    inv = NodeInventory(
        db,
        api,
        pool_label=settings.k8s_pool_label,
        selector=settings.k8s_node_selector,
        tolerated_taints=[t.strip() for t in settings.k8s_tolerated_taints.split(",") if t.strip()],
        watch_timeout_s=60,
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=inv.run,
        args=(stop,),
        kwargs={"active": active, "retry_s": retry_s},
        name="k8s-inventory",
        daemon=True,
    )
    thread.start()
    log.info("kubernetes inventory: watching nodes (%s)", settings.k8s_inventory)
    ray = rayclusters.start(settings, db, api, active)

    def stopper() -> None:
        stop.set()
        inv.stop_watch()
        thread.join(10)
        if ray is not None:
            ray[1]()

    if ray is None:
        return Started(stopper)
    return Started(stopper, ray[0].pause_reason)
