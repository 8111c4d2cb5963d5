"""Online serving: endpoints whose replicas are admitted like jobs and run on Ray Serve.

- ``endpoints``: create, read, change and delete endpoints (member-scoped, audited);
- ``controller``: in the scheduler leader, keeps each endpoint's replica jobs (kind ``serve``)
  between its min and max, following demand, down to zero when idle;
- ``replicas``: the Ray side of one replica (a Serve application pinned to the node the
  admission engine chose), run by the job's supervisor;
- ``gateway``: the OpenAI-compatible API at ``/openai/v1``;
- ``metering``: the token ledger, budget reservations and per-token rate limits.
"""
