"""The tamper-evident audit log (ARCHITECTURE §6).

Every state change is recorded by ``record`` in the same transaction as the change. Events
form hash-chained streams, one per member plus ``platform``: each event's hash is SHA-256 over
the RFC 8785 canonical JSON of its fields and the previous event's hash, with contiguous
sequence numbers. Ed25519-signed checkpoints pin stream heads periodically. ``verify``
recomputes everything and names the first bad sequence number; exports are JSONL +
checkpoints + the public key and verify offline with the same code.

Invariants: the application never updates or deletes audit rows (database triggers refuse
it); a stream's sequence has no gaps; a checkpoint never points past its stream's head.
"""
