"""Shared fixtures: the reference test vector, copied from ../shared/fixtures into tests/fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def reference_vector() -> dict:
    """The reference network's config, state dict, inputs (float16) and eval-mode outputs."""
    return torch.load(FIXTURES / "reference_conformer_mini.pt", weights_only=True)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)
