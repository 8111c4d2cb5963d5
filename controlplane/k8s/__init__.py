"""Kubernetes inventory: Nodes read with the official client keep Nuri's pools and nodes in step.

``core`` is pure (node objects and registry rows in, decisions out); ``reconciler`` is the
adapter that lists and watches Nodes and applies the decisions through one audited
transaction per change. Off unless ``NURI_K8S_INVENTORY`` is set.

Invariant: a node whose observed region or zone contradicts its pool's declared residency, or
whose pool label moved, is ``quarantined`` and gets no new admissions until an admin lifts it;
the reconciler never lifts a quarantine.
"""
