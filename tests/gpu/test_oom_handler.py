"""Recovery plans, retries, memory release and the decorator."""

from __future__ import annotations

import weakref

import pytest
import torch

from ragged.errors import ConfigurationError, OutOfMemoryRecoveryError
from ragged.gpu import DeviceInfo, DeviceManager, DeviceType, OOMHandler, RecoveryStrategy, with_oom_handling
from tests.fakes import FakeBackend, fake_cpu, oom_message

CLEAR, HALVE, CPU = RecoveryStrategy.CLEAR_CACHE, RecoveryStrategy.REDUCE_BATCH, RecoveryStrategy.CPU_FALLBACK


def plan_of(handler: OOMHandler, device: DeviceInfo, batch: int) -> list[tuple[str, str, int]]:
    return [(s.strategy.value, s.device.label, s.batch_size) for s in handler.plan(device, batch)]


@pytest.fixture
def cuda0(gpu_manager: DeviceManager) -> DeviceInfo:
    return gpu_manager.get_optimal_device("cuda:0")


class TestPlan:
    def test_gpu_order_is_cache_batch_cpu(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        assert plan_of(OOMHandler(gpu_manager), cuda0, 8) == [
            ("clear_cache", "cuda:0", 8), ("reduce_batch", "cuda:0", 4), ("cpu_fallback", "cpu", 4)
        ]

    def test_cpu_halves_instead_of_moving(self, gpu_manager: DeviceManager) -> None:
        assert plan_of(OOMHandler(gpu_manager), gpu_manager.cpu(), 8) == [
            ("clear_cache", "cpu", 8), ("reduce_batch", "cpu", 4), ("reduce_batch", "cpu", 2)
        ]

    def test_batch_of_one_skips_halving(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        assert plan_of(OOMHandler(gpu_manager), cuda0, 1) == [("clear_cache", "cuda:0", 1), ("cpu_fallback", "cpu", 1)]

    def test_switches(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        no_clear = OOMHandler(gpu_manager, enable_cache_clearing=False)
        assert plan_of(no_clear, cuda0, 8) == [
            ("reduce_batch", "cuda:0", 4), ("cpu_fallback", "cpu", 4), ("reduce_batch", "cpu", 2)
        ]
        no_cpu = OOMHandler(gpu_manager, enable_cpu_fallback=False)
        assert plan_of(no_cpu, cuda0, 8) == [
            ("clear_cache", "cuda:0", 8), ("reduce_batch", "cuda:0", 4), ("reduce_batch", "cuda:0", 2)
        ]
        nothing = OOMHandler(
            gpu_manager, enable_cache_clearing=False, enable_batch_reduction=False, enable_cpu_fallback=False
        )
        assert plan_of(nothing, cuda0, 8) == []
        assert plan_of(OOMHandler(gpu_manager, max_retries=1), cuda0, 8) == [("clear_cache", "cuda:0", 8)]

    def test_bad_settings(self, gpu_manager: DeviceManager) -> None:
        with pytest.raises(ConfigurationError):
            OOMHandler(gpu_manager, max_retries=-1)


class TestRun:
    def test_retries_follow_the_plan_until_success(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        attempts: list[tuple[str, int]] = []

        def work(device: DeviceInfo, batch: int) -> str:
            attempts.append((device.label, batch))
            if device.is_accelerator:
                raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, 2**30))
            return "done"

        handler = OOMHandler(gpu_manager)
        assert handler.run(work, cuda0, 8) == "done"
        assert attempts == [("cuda:0", 8), ("cuda:0", 8), ("cuda:0", 4), ("cpu", 4)]
        assert handler.stats.as_dict() == {
            "ooms": 3, "failures": 0, "clear_cache": 1, "reduce_batch": 1, "cpu_fallback": 1
        }

    def test_non_oom_errors_are_not_retried(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        calls = []

        def work(device: DeviceInfo, batch: int) -> None:
            calls.append(batch)
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

        with pytest.raises(RuntimeError, match="shapes"):
            OOMHandler(gpu_manager).run(work, cuda0, 8)
        assert calls == [8]

    def test_gives_up_after_three_steps_with_advice(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        calls = []

        def work(device: DeviceInfo, batch: int) -> None:
            calls.append(batch)
            raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, 2**30))

        with pytest.raises(OutOfMemoryRecoveryError) as info:
            OOMHandler(gpu_manager).run(work, cuda0, 8)
        assert len(calls) == 4
        text = str(info.value)
        assert "clear cache" in text and "halve batch" in text and "move to CPU" in text
        assert "--batch-size" in text and "--device" in text
        cause = info.value.__cause__
        assert isinstance(cause, torch.OutOfMemoryError) and cause.__traceback__ is None

    def test_failed_attempt_memory_is_gone_before_release(self, cuda_backend: FakeBackend) -> None:
        """The traceback holds the failed attempt's tensors: they must be freed
        by the time the cache is cleared."""
        manager = DeviceManager([cuda_backend, fake_cpu()])
        refs: list[weakref.ref[torch.Tensor]] = []
        alive_at_clear: list[bool] = []
        cuda_backend.on_clear = lambda index: alive_at_clear.append(any(r() is not None for r in refs))

        def work(device: DeviceInfo, batch: int) -> int:
            activations = torch.ones(batch, 1024)  # stands for the batch's GPU tensors
            refs.append(weakref.ref(activations))
            if len(refs) == 1:
                raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, 2**30))
            return int(activations.sum())

        handler = OOMHandler(manager)
        assert handler.run(work, manager.get_optimal_device("cuda:0"), 4) == 4 * 1024
        assert alive_at_clear == [False]


class TestDecorator:
    @staticmethod
    def chunked_square_sum(limit: int, calls: list[tuple[str, int]]):  # type: ignore[no-untyped-def]
        @with_oom_handling()
        def work(data: list[int], *, device: DeviceInfo, batch_size: int) -> list[int]:
            calls.append((device.label, batch_size))
            if device.is_accelerator and batch_size > limit:
                raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, batch_size))
            out: list[int] = []
            for start in range(0, len(data), batch_size):
                out.extend(x * x for x in data[start : start + batch_size])
            return out

        return work

    def test_result_equals_oom_free_run_on_cpu(self) -> None:
        calls: list[tuple[str, int]] = []
        work = self.chunked_square_sum(limit=3, calls=calls)
        cpu = DeviceInfo(device_type=DeviceType.CPU)
        data = list(range(20))
        assert work(data, device=cpu, batch_size=8) == [x * x for x in data]
        assert calls == [("cpu", 8)]

    def test_recovers_on_a_fake_gpu(self, gpu_manager: DeviceManager, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("ragged.gpu.oom_handler.default_device_manager", lambda: gpu_manager)
        calls: list[tuple[str, int]] = []
        work = self.chunked_square_sum(limit=4, calls=calls)
        data = list(range(20))
        assert work(data, device=gpu_manager.get_optimal_device("cuda:0"), batch_size=8) == [x * x for x in data]
        assert calls == [("cuda:0", 8), ("cuda:0", 8), ("cuda:0", 4)]
        calls.clear()
        assert work(data, device="cuda", batch_size=16) == [x * x for x in data]  # hint string
        assert calls == [("cuda:0", 16), ("cuda:0", 16), ("cuda:0", 8), ("cpu", 8)]

    def test_device_may_be_omitted_when_defaulted(self) -> None:
        @with_oom_handling()
        def work(data: list[int], *, device: DeviceInfo | None = None, batch_size: int = 2) -> str:
            assert isinstance(device, DeviceInfo)
            return f"{device.label}:{batch_size}"

        assert work([1]) in {"cpu:2", "cuda:0:2", "mps:2"}

    def test_rejects_functions_without_the_parameters(self) -> None:
        with pytest.raises(TypeError, match="batch_size"):
            @with_oom_handling()
            def work(data: list[int], *, device: DeviceInfo) -> None: ...

    def test_rejects_bad_batch_size(self) -> None:
        @with_oom_handling()
        def work(data: list[int], *, device: DeviceInfo, batch_size: int) -> None: ...

        with pytest.raises(ConfigurationError):
            work([1], device=DeviceInfo(device_type=DeviceType.CPU), batch_size=0)
