"""A new kind of device is one backend and one registration, made here in
the test file alone: no file under src/ knows about "npu"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ragged.cli.main import cli
from ragged.gpu import DeviceInfo, DeviceManager, DeviceType, Runtime
from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.device_manager import parse_device_hint
from ragged.gpu.oom_detection import is_oom_error
from ragged.gpu.registry import device_choices, ray_resource, register_backend, registered_kinds, unregister_backend
from ragged.gpu.types import AllocatorCounters, MemoryInfo, ProcessMemory
from tests.fakes import GiB

NPU_OOM = "NPU out of memory. Tried to allocate 1.00 GiB (NPU 1; 16.00 GiB total capacity)"


class FakeNPUBackend:
    """Two 16 GiB NPUs with fixed readings; its runtime raises its own OOM message."""

    costly_peak = False

    def __init__(self) -> None:
        self.kind = DeviceType("npu")
        self.cleared: list[int] = []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def properties(self, index: int) -> DeviceProperties:
        return DeviceProperties(name=f"Fake NPU {index}", total_memory=16 * GiB, arch="npu-v2")

    def memory_info(self, index: int) -> MemoryInfo:
        return MemoryInfo(total=16 * GiB, free=(12 - index) * GiB, allocated=GiB, reserved=2 * GiB)

    def counters(self, index: int) -> AllocatorCounters:
        return AllocatorCounters(GiB, 2 * GiB, GiB)

    def reset_peak(self, index: int) -> None:
        return None

    def clear_cache(self, index: int) -> None:
        self.cleared.append(index)

    def supports_bf16(self, index: int) -> bool:
        return True

    def compute_dtype(self, index: int) -> str:
        return "bfloat16"

    def processes(self, index: int) -> list[ProcessMemory] | None:
        return None


@pytest.fixture
def npu() -> Iterator[DeviceType]:
    kind = register_backend("npu", FakeNPUBackend, indexed=True, description="fake NPUs",
                            is_oom=lambda exc: "NPU out of memory" in str(exc), ray_resource="NPU")
    try:
        yield kind
    finally:
        unregister_backend("npu")


def test_a_registered_kind_is_detected_parsed_and_read(npu: DeviceType) -> None:
    assert npu is DeviceType("npu") and npu.indexed and npu in registered_kinds()
    assert "npu, npu:N" in device_choices()
    assert parse_device_hint("npu:1") == (npu, 1)
    manager = DeviceManager()
    chosen = manager.get_optimal_device("npu")  # the one with the most free memory
    assert chosen.label == "npu:0" and chosen.name == "Fake NPU 0" and chosen.arch == "npu-v2"
    assert manager.get_optimal_device().label == "npu:0"  # auto: before the CPU
    info = manager.get_device_memory_info(manager.get_optimal_device("npu:1"))
    assert (info.total, info.free, info.available) == (16 * GiB, 11 * GiB, 12 * GiB)
    assert manager.compute_dtype(chosen) == "bfloat16"
    assert ray_resource(npu) == "NPU"


def test_its_out_of_memory_errors_are_recovered_like_any(npu: DeviceType) -> None:
    assert is_oom_error(RuntimeError(NPU_OOM)) and not is_oom_error(RuntimeError("NPU kernel launch failed"))
    runtime = Runtime(DeviceManager())
    device = runtime.device("npu:0")
    sizes: list[int] = []

    def work(dev: DeviceInfo, size: int) -> int:
        sizes.append(size)
        if size > 4:
            raise RuntimeError(NPU_OOM)
        return size

    assert runtime.oom_handler.run(work, device, 16) == 4
    assert sizes == [16, 8, 4] and runtime.oom_handler.ceiling(device, "call") == 4


def test_the_command_line_lists_and_selects_it(npu: DeviceType) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["gpu", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["device"]: row for row in json.loads(listed.output)}
    assert rows["npu:0"]["auto"] and rows["npu:1"]["free_bytes"] == 11 * GiB
    info = runner.invoke(cli, ["gpu", "info", "npu:1"])
    assert info.exit_code == 0 and "Fake NPU 1" in info.output and "bfloat16" in info.output
    unknown = runner.invoke(cli, ["gpu", "info", "tpu"])
    assert unknown.exit_code == 1 and "npu:N" in unknown.output  # the accepted kinds come from the registry


@pytest.mark.slow
def test_ingest_runs_on_it(npu: DeviceType, model_cache: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path: --device npu picks the registered kind for the model and its batches."""
    from tests.inputs import EXAMPLES

    monkeypatch.setattr(DeviceInfo, "torch_device", property(lambda self: torch.device("cpu")))  # computes here
    monkeypatch.setenv("RAGGED_CACHE_DIR", str(model_cache))
    sample = next(EXAMPLES.glob("*.pdf"))
    done = CliRunner().invoke(cli, ["ingest", str(sample), "--model", "tiny-colpali", "--device", "npu",
                                    "--text-model", "none", "--dpi", "50", "--index", str(tmp_path / "i"), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output[done.output.index("{"):])
    assert report["device"] == "npu:0" and report["vision"]["device"] == "npu:0" and report["pages_added"] >= 1
