"""Shared fixtures: the reference test vector, copied from ../shared/fixtures into tests/fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def reference_vector() -> dict:
    """The reference network's config, state dict, inputs (float16) and eval-mode outputs."""
    return torch.load(FIXTURES / "reference_conformer_mini.pt", weights_only=True)


@pytest.fixture(autouse=True)
def _one_compute_thread() -> None:
    """torch on one thread in every test: the models here are tiny, and on a 2-core CPU that other
    jobs share, a second thread mostly spins waiting for the first."""
    torch.set_num_threads(1)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for a test, the previous count restored after it (modules that declare
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` keep it whatever the default becomes)."""
    import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)

    with T.one_thread():
        yield


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the inference tests' shared artefacts (``inference_testlib``: the briefly
    trained model, its checkpoint and exports, photos, Fashion-MNIST images), built on first use."""
    return tmp_path_factory.getbasetemp() / "inference"
