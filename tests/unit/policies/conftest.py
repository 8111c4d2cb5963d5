"""Make the builders importable from the tests of this folder (pytest runs in importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from policy_builders import fresh_engine  # noqa: E402

from policies import PolicyEngine  # noqa: E402


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    """An engine over the shipped policies with its own cache."""
    shipped: PolicyEngine = fresh_engine()
    return shipped
