"""The web portal: server-rendered pages over the same services as the REST API.

Owns: sign-in with an API token into a portal session (``sessions``), and the pages of
``routes`` (jobs, submission, usage against quotas and budgets, datasets, the audit log),
rendered from ``web/templates``. Invariants: every page acts as the session's token through
the service layer, so tenancy, roles, scopes and audit are exactly the REST API's (another
member's object is a 404 page); every state-changing form is a POST carrying the session's
CSRF token; the sign-in form carries a token bound to a pre-session cookie, and sign-in and
sign-out refuse a post whose Origin (or Referer) is another site (login CSRF); only hashes of
session secrets are stored; disabling a user ends their sessions for good.
"""
