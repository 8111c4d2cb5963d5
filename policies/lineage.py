"""Lineage: which artifacts derive from which, and their effective labels after a relabel.

The control plane stores each derived artifact's effective label when it is written. When an
input is relabelled, ``derived_from`` names every artifact downstream of it and
``lineage_labels`` recomputes what their labels would be now, so that the jobs and artifacts
concerned can be checked again (with ``PolicyEngine.allowed_pools`` and ``export``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from policies.labels import InvalidLabels, Labels, effective_label


def derived_from(inputs: Mapping[str, Sequence[str]], changed: Iterable[str]) -> set[str]:
    """Every artifact that has one of ``changed`` among its (transitive) inputs.

    ``inputs`` maps each derived artifact id to the ids of its inputs.
    """
    users: dict[str, list[str]] = {}
    for artifact, sources in inputs.items():
        for source in sources:
            users.setdefault(source, []).append(artifact)
    found: set[str] = set()
    stack = list(changed)
    while stack:
        for artifact in users.get(stack.pop(), ()):
            if artifact not in found:
                found.add(artifact)
                stack.append(artifact)
    return found


def lineage_labels(
    own: Mapping[str, Labels], inputs: Mapping[str, Sequence[str]]
) -> dict[str, Labels]:
    """The label of every artifact: its own for sources, the effective label for derived ones.

    ``own`` holds the labels of source artifacts (registered datasets, base models);
    ``inputs`` maps each derived artifact to its inputs, which may be sources or other derived
    artifacts. Raises ``InvalidLabels`` for an unknown input, a derived artifact without
    inputs, or a cycle.
    """
    labels: dict[str, Labels] = {k: v for k, v in own.items() if k not in inputs}
    visiting: set[str] = set()

    def label_of(artifact: str) -> Labels:
        if artifact in labels:
            return labels[artifact]
        if artifact not in inputs:
            raise InvalidLabels(f"artifact {artifact!r} has neither labels nor inputs")
        if artifact in visiting:
            raise InvalidLabels(f"artifact {artifact!r} is its own ancestor")
        if not inputs[artifact]:
            raise InvalidLabels(f"derived artifact {artifact!r} has no inputs")
        visiting.add(artifact)
        result = effective_label(label_of(source) for source in inputs[artifact])
        visiting.discard(artifact)
        labels[artifact] = result
        return result

    for artifact in sorted(inputs):
        label_of(artifact)
    return labels
