"""quotas: the admission engine (pure).

Owns the quota tree (cohort -> member, nominal / borrowing / lending per pool), fair share,
gang and topology fit, preemption, backfill, GPU-hour budgets, pending explanations and ETAs,
and the trace simulator.

Invariants: no I/O of any kind. Nothing here imports a database, web, Ray or torch module,
reads the clock or the environment. Time always arrives as an argument
(``admit(snapshot, now)``) so every decision is reproducible from its inputs.
"""
