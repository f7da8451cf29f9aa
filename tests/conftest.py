"""Test-wide settings: hypothesis profiles that tolerate a loaded 2-core CI machine."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import syncd

needs_python_source = pytest.mark.skipif(
    syncd.compiled(),
    reason="replaces a function that the compiled build calls directly (or passes a wrong "
    "type, which it refuses with TypeError); the suite's run on the Python source covers it",
)

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    parent=settings.get_profile("default"),
    max_examples=1000,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
