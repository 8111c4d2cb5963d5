"""The ``nuri`` command (typer + rich) over the Python SDK in ``controlplane.client``."""
