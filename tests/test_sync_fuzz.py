"""Convergence under random schedules (tests/sync_fuzz.py): loss, duplication, reordering,
partitions and restarts, every field type; every node ends equal to the oracle."""

from __future__ import annotations

import pytest

from tests.sync_fuzz import Fuzz


@pytest.mark.parametrize("chunk", range(6))
def test_random_schedules_converge_to_the_oracle(chunk: int) -> None:
    for seed in range(chunk * 20, chunk * 20 + 20):
        fuzz = Fuzz(seed, nodes=3 + seed % 3, nss=("ns", "other") if seed % 4 == 0 else ("ns",))
        fuzz.chaos(80)
        fuzz.settle()
        assert fuzz.check_acks() == [], f"seed {seed}"
