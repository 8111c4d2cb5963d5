"""policies: residency and access policy (pure).

Owns the Cedar policy files and schema, their evaluation, and the effective-label rules for
derived artifacts (allowed regions intersect, classification takes the highest, personal
information is the union).

Invariants: no I/O beyond reading the policy files shipped in this package; no database, web,
Ray or torch imports; no clock. An error during evaluation is a denial.

Public API
----------
Facts (plain frozen dataclasses, built by the control plane from its rows):

- ``Labels`` (``from_dict`` / ``to_dict`` of the stored JSON), ``Classification``
  (``OPEN < SENSITIVE < CLASSIFIED``; CSAP grades accepted by ``Classification.parse``),
  ``effective_label(inputs)`` for derived artifacts, ``InvalidLabels`` (code
  ``invalid_labels``); ``widening(before, after)`` / ``narrowing(before, after)``: the parts
  (``LABEL_PARTS``: ``allowed_regions``, ``classification``, ``personal_info``,
  ``transfer_basis``, ``jurisdiction``) in which a relabelling loosens / tightens the labels;
- ``PoolFacts(name, region, jurisdiction, max_classification)``: admin-asserted pool facts;
- ``ArtifactFacts(ref, labels, kind, member)``, ``ArtifactKind``, ``Destination``;
- ``Caller(user_id, role, member)``, ``Role``, ``Action``, and the objects of access:
  ``JobFacts``, ``MemberRef``, ``AuditStream``, ``Platform``.

Decisions: ``PolicyEngine`` (``shipped()`` or ``from_text(policies, schema, release)``) with
``placement(inputs, pool)``, ``allowed_pools(inputs, pools)``,
``allowed_pools_for_jobs(jobs, pools)``, ``export(artifact, region, jurisdiction, ...)``,
``authorize(caller, action, resource, destination=...)``, ``authorize_batch(requests)``,
``policy_set_hash`` and ``version``. The module-level ``placement``, ``allowed_pools``,
``export`` and ``authorize`` use the shipped policies. Each returns a ``Decision(allowed,
policy_ids, reasons, errors, policy_set_hash)`` with ``to_dict()``.

Lineage: ``policies.lineage.derived_from(inputs, changed)`` names the artifacts downstream of
a relabelled input and ``lineage_labels(own, inputs)`` recomputes their labels.
``policies.reference`` restates the residency rules in Python for cross-checking Cedar.

Semantics worth knowing: a job is placed on a pool only if every input may be processed there
(no inputs: denied, ``nuri.no-inputs``); export without a caller judges residency only, with a
caller access too; an export destination is cleared up to ``sensitive`` unless asserted
otherwise; a derived artifact mixing personal information from several jurisdictions gets a
composite jurisdiction (``KR+US``) that matches no pool. Decisions are cached per
(policy-set hash, the facts Cedar saw) in a bounded LRU; errors are never cached.

Rule ids (``@id`` in ``policies/cedar/*.cedar``): ``residency.schedule.{permit,region,
classification,personal-info-transfer}``, ``residency.export.{region,classification,
personal-info-transfer}``, ``access.*``; engine-level ids ``nuri.evaluation-error`` and
``nuri.no-inputs``.
"""

from policies.decision import Decision, DecisionCache
from policies.engine import (
    EVALUATION_ERROR_ID,
    NO_INPUTS_ID,
    AccessRequest,
    PolicyEngine,
    allowed_pools,
    authorize,
    default_engine,
    export,
    placement,
)
from policies.facts import (
    AccessResource,
    Action,
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
from policies.labels import (
    LABEL_PARTS,
    Classification,
    InvalidLabels,
    Labels,
    effective_label,
    narrowing,
    widening,
)
from policies.policy_set import CompiledPolicySet, PolicySetInvalid

__all__ = [
    "EVALUATION_ERROR_ID",
    "LABEL_PARTS",
    "NO_INPUTS_ID",
    "AccessRequest",
    "AccessResource",
    "Action",
    "ArtifactFacts",
    "ArtifactKind",
    "AuditStream",
    "Caller",
    "Classification",
    "CompiledPolicySet",
    "Decision",
    "DecisionCache",
    "Destination",
    "InvalidLabels",
    "JobFacts",
    "Labels",
    "MemberRef",
    "Platform",
    "PolicyEngine",
    "PolicySetInvalid",
    "PoolFacts",
    "Role",
    "allowed_pools",
    "authorize",
    "default_engine",
    "effective_label",
    "export",
    "narrowing",
    "placement",
    "widening",
]
