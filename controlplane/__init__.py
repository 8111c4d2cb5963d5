"""controlplane: everything with I/O.

REST API and portal routes, the database (SQLModel + Alembic), the scheduler service, Ray and
Kubernetes adapters, the audit store, telemetry, settings and the ``nuri`` CLI.

Layers point one way: routers -> services (one transaction per use case) -> {quotas,
policies, db, adapters}. Each status column has exactly one module that writes it.
"""
