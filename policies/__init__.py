"""policies: residency and access policy (pure).

Owns the Cedar policy files and schema, their evaluation, and the effective-label rules for
derived artifacts (allowed regions intersect, classification takes the highest, personal
information is the union).

Invariants: no I/O beyond reading the policy files shipped in this package; no database, web,
Ray or torch imports; no clock. An error during evaluation is a denial.
"""
