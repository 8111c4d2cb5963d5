"""Residency labels of datasets and models, and the effective label of derived artifacts.

A label says where data may be processed: the ``allowed_regions`` (admin region names such as
``kr-seoul``), the highest ``classification`` a pool must be cleared for, whether it holds
personal information, the ``jurisdiction`` (ISO 3166 country) whose law governs that personal
information, and the ``transfer_basis`` recorded for processing it outside that jurisdiction.

The JSON form (what the API stores) is::

    {"jurisdiction": "KR", "allowed_regions": ["kr-daejeon", "kr-seoul"],
     "classification": "open|sensitive|classified", "personal_info": false,
     "transfer_basis": null}

A derived artifact (a fine-tuned model, a distilled student, inference outputs) gets
``effective_label(inputs)``, which is never less restricted than any of its inputs.

``widening(before, after)`` names the parts in which a relabelling makes data less restricted
(``narrowing`` those in which it makes it more): labels only widen with authority.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

REGION_PATTERN = re.compile(r"^[a-z0-9-]{2,40}$")
COUNTRY_PATTERN = re.compile(r"^[A-Z]{2}$")
# A composite jurisdiction ("KR+US") names every jurisdiction whose personal-information law
# applies to a derived artifact; it matches no pool's (single) jurisdiction by construction.
JURISDICTION_SEPARATOR = "+"
# Distinct transfer bases of the inputs of a derived artifact are kept, joined by this.
TRANSFER_BASIS_SEPARATOR = "; "


class InvalidLabels(ValueError):
    """Labels that cannot be parsed or are inconsistent. ``code`` is stable for API errors."""

    code = "invalid_labels"


class Classification(IntEnum):
    """How restricted data is, ordered: ``OPEN < SENSITIVE < CLASSIFIED``.

    A pool may process data up to its ``max_classification``. The Korean cloud security
    assurance grades (CSAP) map onto the same scale: ``csap-low`` (하) is open,
    ``csap-moderate`` (중) is sensitive and ``csap-high`` (상) is classified. Labels always
    serialise to the three canonical names.
    """

    OPEN = 0
    SENSITIVE = 1
    CLASSIFIED = 2

    @property
    def text(self) -> str:
        """The canonical name stored in JSON (``open``, ``sensitive``, ``classified``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Classification) -> Classification:
        """A classification from its canonical name, a CSAP grade alias or its rank.

        Raises ``InvalidLabels`` for anything else.
        """
        if isinstance(value, Classification):
            return value
        if isinstance(value, bool):
            raise InvalidLabels(f"classification must be a name, not {value!r}")
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise InvalidLabels(f"unknown classification rank {value!r}") from None
        if isinstance(value, str):
            found = _CLASSIFICATION_NAMES.get(value.strip().lower())
            if found is not None:
                return found
        raise InvalidLabels(
            f"unknown classification {value!r}; expected one of "
            + ", ".join(sorted(_CLASSIFICATION_NAMES))
        )


_CLASSIFICATION_NAMES: dict[str, Classification] = {
    "open": Classification.OPEN,
    "sensitive": Classification.SENSITIVE,
    "classified": Classification.CLASSIFIED,
    "csap-low": Classification.OPEN,
    "csap-moderate": Classification.SENSITIVE,
    "csap-high": Classification.CLASSIFIED,
    "하": Classification.OPEN,
    "중": Classification.SENSITIVE,
    "상": Classification.CLASSIFIED,
}


def _split_jurisdiction(value: str) -> frozenset[str]:
    parts = value.split(JURISDICTION_SEPARATOR)
    if not parts or not all(COUNTRY_PATTERN.match(p) for p in parts):
        raise InvalidLabels(
            f"jurisdiction {value!r} must be an ISO 3166 country code such as 'KR' "
            "(or several joined by '+')"
        )
    return frozenset(parts)


def join_jurisdictions(countries: Iterable[str]) -> str:
    """The canonical (sorted, de-duplicated) jurisdiction text for a set of countries."""
    return JURISDICTION_SEPARATOR.join(sorted(set(countries)))


@dataclass(frozen=True, slots=True)
class Labels:
    """Residency labels of one dataset or model (see the module docstring for the JSON).

    ``allowed_regions`` may be empty: such data may be processed nowhere (an effective label
    whose inputs share no region). ``transfer_basis`` is normalised: blank means ``None``.
    The jurisdiction is canonical: one country, or several sorted and joined by ``+``.
    """

    jurisdiction: str
    allowed_regions: frozenset[str]
    classification: Classification = Classification.OPEN
    personal_info: bool = False
    transfer_basis: str | None = None

    def __post_init__(self) -> None:
        countries = _split_jurisdiction(self.jurisdiction)
        object.__setattr__(self, "jurisdiction", join_jurisdictions(countries))
        if isinstance(self.allowed_regions, str):
            raise InvalidLabels("allowed_regions must be a collection of region names")
        regions = frozenset(self.allowed_regions)
        for region in regions:
            if not isinstance(region, str) or not REGION_PATTERN.match(region):
                raise InvalidLabels(
                    f"region {region!r} must match {REGION_PATTERN.pattern} (e.g. 'kr-seoul')"
                )
        object.__setattr__(self, "allowed_regions", regions)
        object.__setattr__(self, "classification", Classification.parse(self.classification))
        if not isinstance(self.personal_info, bool):
            raise InvalidLabels("personal_info must be true or false")
        basis = self.transfer_basis
        if basis is not None and not isinstance(basis, str):
            raise InvalidLabels("transfer_basis must be text or null")
        object.__setattr__(self, "transfer_basis", (basis or "").strip() or None)

    @property
    def jurisdictions(self) -> frozenset[str]:
        """The countries named by ``jurisdiction`` (one, unless this is a derived label)."""
        return frozenset(self.jurisdiction.split(JURISDICTION_SEPARATOR))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Labels:
        """Labels from their stored JSON form; raises ``InvalidLabels`` naming the problem."""
        if not isinstance(data, Mapping):
            raise InvalidLabels("labels must be a JSON object")
        unknown = set(data) - {
            "jurisdiction",
            "allowed_regions",
            "classification",
            "personal_info",
            "transfer_basis",
        }
        if unknown:
            raise InvalidLabels(f"unknown label fields: {', '.join(sorted(unknown))}")
        if "jurisdiction" not in data or not isinstance(data["jurisdiction"], str):
            raise InvalidLabels("labels need a jurisdiction (an ISO 3166 country code)")
        regions = data.get("allowed_regions")
        if not isinstance(regions, list | tuple | set | frozenset):
            raise InvalidLabels("labels need allowed_regions (a list of region names)")
        return cls(
            jurisdiction=data["jurisdiction"],
            allowed_regions=frozenset(regions),
            classification=Classification.parse(data.get("classification", "open")),
            personal_info=data.get("personal_info", False),
            transfer_basis=data.get("transfer_basis"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form (regions sorted, so equal labels give equal JSON)."""
        return {
            "jurisdiction": self.jurisdiction,
            "allowed_regions": sorted(self.allowed_regions),
            "classification": self.classification.text,
            "personal_info": self.personal_info,
            "transfer_basis": self.transfer_basis,
        }


def effective_label(inputs: Iterable[Labels]) -> Labels:
    """The label of an artifact derived from ``inputs`` (the base or teacher model included).

    - allowed regions: the intersection over all inputs;
    - classification: the highest of the inputs;
    - personal information: present if any input has it;
    - jurisdiction: the union of the jurisdictions of the inputs that carry personal
      information (or of all inputs when none does), as a composite such as ``KR+US`` when they
      differ. A composite matches no pool, so personal information mixed from several
      jurisdictions can be processed only under a transfer basis;
    - transfer basis: kept only if every personal-information input has one (their distinct
      bases joined by ``"; "``); otherwise, and when no input has personal information, None.

    The result is at least as restricted as every input, so labels only get stricter along a
    lineage chain. Raises ``InvalidLabels`` for no inputs: every derived artifact has at least
    its base model as an input.
    """
    labels = tuple(inputs)
    if not labels:
        raise InvalidLabels("a derived artifact needs at least one input (its base model)")
    regions = frozenset.intersection(*(label.allowed_regions for label in labels))
    classification = max(label.classification for label in labels)
    personal = tuple(label for label in labels if label.personal_info)
    deciding = personal or labels
    jurisdiction = join_jurisdictions(c for label in deciding for c in label.jurisdictions)
    basis: str | None = None
    if personal and all(label.transfer_basis for label in personal):
        bases = {
            part.strip()
            for label in personal
            for part in (label.transfer_basis or "").split(TRANSFER_BASIS_SEPARATOR)
            if part.strip()
        }
        basis = TRANSFER_BASIS_SEPARATOR.join(sorted(bases))
    return Labels(
        jurisdiction=jurisdiction,
        allowed_regions=regions,
        classification=classification,
        personal_info=bool(personal),
        transfer_basis=basis,
    )


# The parts of a label a change can widen or narrow, in the order they are reported (the
# field names of the stored JSON).
LABEL_PARTS = (
    "allowed_regions",
    "classification",
    "personal_info",
    "transfer_basis",
    "jurisdiction",
)


def transfer_bases(labels: Labels) -> frozenset[str]:
    """The legal grounds recorded in ``transfer_basis`` (an effective label joins several)."""
    return frozenset(
        part.strip()
        for part in (labels.transfer_basis or "").split(TRANSFER_BASIS_SEPARATOR)
        if part.strip()
    )


def widening(before: Labels, after: Labels) -> list[str]:
    """The parts (``LABEL_PARTS``, in that order) in which ``after`` is less strict than
    ``before``; empty when the change only keeps or tightens the labels.

    - ``allowed_regions``: a region is added (a different set that is not a subset too);
    - ``classification``: lowered;
    - ``personal_info``: true becomes false;
    - ``transfer_basis``: a basis is recorded where there was none, or a recorded ground is
      dropped or replaced. A basis lets personal information leave its jurisdiction, so
      removing it altogether is a narrowing; adding a ground to the ones kept is not a
      widening (an effective label joins the grounds of its inputs);
    - ``jurisdiction``: a country governing the data is no longer named (a change from ``KR``
      to ``US`` widens; ``KR`` to the composite ``KR+US`` narrows: it matches no pool).

    Jurisdiction and transfer basis govern personal information only: a change that first
    declares personal information (``personal_info`` false to true) narrows on that part and
    widens neither of them, since data without personal information was not confined to any
    jurisdiction. So an empty result means ``after`` may be placed or exported nowhere that
    ``before`` could not be, the relation is reflexive and transitive (no chain of
    non-widening changes ends wider than it began), and an input's non-widening change never
    widens ``effective_label`` of the inputs.
    """
    parts: list[str] = []
    if not after.allowed_regions <= before.allowed_regions:
        parts.append("allowed_regions")
    if after.classification < before.classification:
        parts.append("classification")
    if before.personal_info and not after.personal_info:
        parts.append("personal_info")
    declares = after.personal_info and not before.personal_info
    old_bases, new_bases = transfer_bases(before), transfer_bases(after)
    if not declares and new_bases and not (old_bases and new_bases >= old_bases):
        parts.append("transfer_basis")
    if not declares and not after.jurisdictions >= before.jurisdictions:
        parts.append("jurisdiction")
    return parts


def narrowing(before: Labels, after: Labels) -> list[str]:
    """The parts in which ``after`` is stricter than ``before``: those that undoing the change
    would widen (a different region set both widens and narrows ``allowed_regions``)."""
    return widening(after, before)
