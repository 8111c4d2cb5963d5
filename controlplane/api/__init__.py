"""REST API v1 and its composition root (``create_app``)."""
