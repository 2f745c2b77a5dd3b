"""Shared fixtures: fake device managers, and tiny models built once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.types import DeviceType
from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip hardware-marked tests cleanly where the hardware is missing."""
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    no_mps = pytest.mark.skip(reason="needs Apple MPS")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "mps" in item.keywords and not torch.backends.mps.is_available():
            item.add_marker(no_mps)


@pytest.fixture
def cuda_backend() -> FakeBackend:
    """One fake 8 GiB CUDA card."""
    return FakeBackend(kind=DeviceType.CUDA, cards=[FakeCard(name="Fake A", total=8 * GiB)])


@pytest.fixture
def cpu_backend() -> FakeBackend:
    """A fake CPU with 16 GiB of RAM, 2 GiB used by others."""
    return fake_cpu()


@pytest.fixture
def gpu_manager(cuda_backend: FakeBackend, cpu_backend: FakeBackend) -> DeviceManager:
    """A manager that sees one fake CUDA card and a fake CPU."""
    return DeviceManager([cuda_backend, cpu_backend])


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache folder shared by the session, so each tiny preset is built once."""
    shared = os.environ.get("RAGGED_TEST_CACHE")
    yield Path(shared) if shared else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True)
def _cores_read_as_free(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's load reading (which picks the first CPU batch) reads the cores
    as free, as the clock is pinned elsewhere: a test's sizes must not depend
    on what else the machine runs. ``test_host_load`` reads the real thing."""
    if request.node.module.__name__.endswith("test_host_load"):
        return
    from ragged.gpu.backends import host_load

    monkeypatch.setattr(host_load.LoadMeter, "read", lambda self: 0.0)
