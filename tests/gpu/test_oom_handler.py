"""The one recovery engine: its sequence, what it learns, the decorator."""

from __future__ import annotations

import weakref

import pytest
import torch

from ragged.errors import ConfigurationError, OutOfMemoryRecoveryError
from ragged.gpu import DeviceInfo, DeviceManager, DeviceType, OOMHandler, Runtime, with_oom_handling
from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu, oom_message


def plan_of(handler: OOMHandler, device: DeviceInfo, batch: int) -> list[tuple[str, str, int]]:
    return [(s.strategy.value, s.device.label, s.batch_size) for s in handler.plan(device, batch)]


def cuda_oom(nbytes: int = GiB) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(oom_message(DeviceType.CUDA, nbytes))


@pytest.fixture
def cuda0(gpu_manager: DeviceManager) -> DeviceInfo:
    return gpu_manager.get_optimal_device("cuda:0")


class TestSequence:
    def test_split_then_clear_then_cpu(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        assert plan_of(OOMHandler(gpu_manager), cuda0, 8) == [
            ("reduce_batch", "cuda:0", 4), ("reduce_batch", "cuda:0", 2), ("reduce_batch", "cuda:0", 1),
            ("clear_cache", "cuda:0", 1), ("cpu_fallback", "cpu", 1), ("clear_cache", "cpu", 1),
        ]

    def test_on_the_cpu_there_is_nowhere_to_move(self, gpu_manager: DeviceManager) -> None:
        assert plan_of(OOMHandler(gpu_manager), gpu_manager.cpu(), 4) == [
            ("reduce_batch", "cpu", 2), ("reduce_batch", "cpu", 1), ("clear_cache", "cpu", 1)
        ]

    def test_switches_and_limits(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        no_split = OOMHandler(gpu_manager, enable_batch_reduction=False)
        assert plan_of(no_split, cuda0, 8) == [("clear_cache", "cuda:0", 8), ("cpu_fallback", "cpu", 8),
                                                ("clear_cache", "cpu", 8)]
        no_cpu = OOMHandler(gpu_manager, enable_cpu_fallback=False, enable_cache_clearing=False)
        assert plan_of(no_cpu, cuda0, 4) == [("reduce_batch", "cuda:0", 2), ("reduce_batch", "cuda:0", 1)]
        nothing = OOMHandler(gpu_manager, enable_cache_clearing=False, enable_batch_reduction=False,
                             enable_cpu_fallback=False)
        assert plan_of(nothing, cuda0, 8) == []
        assert plan_of(OOMHandler(gpu_manager, max_retries=2), cuda0, 8) == [
            ("reduce_batch", "cuda:0", 4), ("reduce_batch", "cuda:0", 2)
        ]
        assert plan_of(OOMHandler(gpu_manager, min_batch_size=4), cuda0, 16)[:3] == [
            ("reduce_batch", "cuda:0", 8), ("reduce_batch", "cuda:0", 4), ("clear_cache", "cuda:0", 4)
        ]

    def test_bad_settings(self, gpu_manager: DeviceManager) -> None:
        for kwargs in ({"max_retries": -1}, {"min_batch_size": 0}, {"relax_after": 0}):
            with pytest.raises(ConfigurationError):
                OOMHandler(gpu_manager, **kwargs)  # type: ignore[arg-type]


class TestRun:
    def test_recovers_and_counts_in_one_record(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        attempts: list[tuple[str, int]] = []

        def work(device: DeviceInfo, batch: int) -> str:
            attempts.append((device.label, batch))
            if device.is_accelerator and batch > 2:
                raise cuda_oom()
            return f"done at {batch}"

        handler = OOMHandler(gpu_manager)
        assert handler.run(work, cuda0, 8) == "done at 2"
        assert attempts == [("cuda:0", 8), ("cuda:0", 4), ("cuda:0", 2)]
        assert handler.stats.as_dict() == {"ooms": 2, "failures": 0, "clear_cache": 0, "reduce_batch": 2,
                                           "cpu_fallback": 0}

    def test_second_call_starts_at_the_size_that_worked(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        attempts: list[int] = []

        def work(device: DeviceInfo, batch: int) -> int:
            attempts.append(batch)
            if batch > 3:
                raise cuda_oom()
            return batch

        handler = OOMHandler(gpu_manager)
        handler.run(work, cuda0, 8, work="chunks")
        attempts.clear()
        assert handler.run(work, cuda0, 8, work="chunks") == 2  # 8 and 4 failed, 2 worked: start there
        assert attempts == [2] and handler.stats.ooms == 2
        assert handler.run(work, cuda0, 8, work="other") == 2  # another kind of work learns on its own

    def test_non_oom_errors_are_not_retried(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        calls = []

        def work(device: DeviceInfo, batch: int) -> None:
            calls.append(batch)
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

        with pytest.raises(RuntimeError, match="shapes"):
            OOMHandler(gpu_manager).run(work, cuda0, 8)
        assert calls == [8]

    def test_gives_up_with_what_was_tried_and_advice(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        def work(device: DeviceInfo, batch: int) -> None:
            raise cuda_oom() if device.is_accelerator else RuntimeError(oom_message(DeviceType.CPU, 10**9))

        handler = OOMHandler(gpu_manager)
        with pytest.raises(OutOfMemoryRecoveryError) as info:
            handler.run(work, cuda0, 2)
        text = str(info.value)
        assert "split -> batch 1 on cuda:0" in text and "move to CPU" in text and "clear cache" in text
        assert "--batch-size" in text and "--device" in text
        cause = info.value.__cause__
        assert cause is not None and "DefaultCPUAllocator" in str(cause) and cause.__traceback__ is None
        assert handler.stats.failures == 1

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
                raise cuda_oom()
            return int(activations.sum())

        assert OOMHandler(manager).run(work, manager.get_optimal_device("cuda:0"), 4) == 2 * 1024
        assert alive_at_clear == [False]


class TestLessons:
    def test_ceiling_lifts_after_a_run_of_clean_batches(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        handler = OOMHandler(gpu_manager, relax_after=3)
        handler.learn_oom(cuda0, 16, "pages")
        assert handler.clamp(cuda0, 32, "pages") == 15
        for _ in range(2):
            handler.learn_success(cuda0, 15, "pages")
        handler.learn_success(cuda0, 4, "pages")  # below the ceiling: says nothing about it
        assert handler.ceiling(cuda0, "pages") == 15
        handler.learn_success(cuda0, 15, "pages")
        assert handler.ceiling(cuda0, "pages") is None

    def test_a_second_strike_doubles_the_wait(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        handler = OOMHandler(gpu_manager, relax_after=2)
        handler.learn_oom(cuda0, 8)
        for _ in range(2):
            handler.learn_success(cuda0, 7)
        assert handler.ceiling(cuda0) is None
        handler.learn_oom(cuda0, 8)  # failed again once lifted
        for _ in range(3):
            handler.learn_success(cuda0, 7)
        assert handler.ceiling(cuda0) == 7
        handler.learn_success(cuda0, 7)
        assert handler.ceiling(cuda0) is None

    def test_ceiling_lifts_when_a_co_tenant_leaves(self) -> None:
        card = FakeCard(total=10 * GiB, others=8 * GiB)
        manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
        cuda0 = manager.get_optimal_device("cuda:0")
        handler = OOMHandler(manager)
        handler.learn_oom(cuda0, 8, available=2 * GiB)
        handler.learn_success(cuda0, 2, available=int(2.5 * GiB))  # not enough back yet
        assert handler.ceiling(cuda0) == 7
        handler.learn_success(cuda0, 2, available=9 * GiB)  # the other job left
        assert handler.ceiling(cuda0) is None

    def test_forget(self, gpu_manager: DeviceManager, cuda0: DeviceInfo) -> None:
        handler = OOMHandler(gpu_manager)
        handler.learn_oom(cuda0, 2)
        assert handler.clamp(cuda0, 9) == 1
        handler.forget()
        assert handler.clamp(cuda0, 9) == 9


class TestDecorator:
    @staticmethod
    def chunked_squares(limit: int, calls: list[tuple[str, int]], runtime: Runtime | None = None):  # type: ignore[no-untyped-def]
        @with_oom_handling(runtime)
        def work(data: list[int], *, device: DeviceInfo, batch_size: int) -> list[int]:
            calls.append((device.label, batch_size))
            if device.is_accelerator and batch_size > limit:
                raise cuda_oom(batch_size)
            out: list[int] = []
            for start in range(0, len(data), batch_size):
                out.extend(x * x for x in data[start : start + batch_size])
            return out

        return work

    def test_recovers_to_the_oom_free_result_and_learns_once_for_every_call(self, gpu_manager: DeviceManager) -> None:
        calls: list[tuple[str, int]] = []
        runtime = Runtime(gpu_manager)
        work = self.chunked_squares(limit=4, calls=calls, runtime=runtime)
        data = list(range(20))
        got = work(data, device=gpu_manager.get_optimal_device("cuda:0"), batch_size=16)
        assert got == [x * x for x in data]  # what one OOM-free pass gives
        assert calls == [("cuda:0", 16), ("cuda:0", 8), ("cuda:0", 4)]  # two OOMs, each split in half
        calls.clear()
        assert work(data, device="cuda", batch_size=16) == [x * x for x in data]  # a hint string, same handler
        assert calls == [("cuda:0", 4)]  # no OOM on the second call
        assert work.oom_handler() is runtime.oom_handler and runtime.oom_handler.stats.ooms == 2  # type: ignore[attr-defined]

    def test_without_a_runtime_each_function_gets_a_private_engine(self) -> None:
        first = self.chunked_squares(limit=4, calls=[])
        second = self.chunked_squares(limit=4, calls=[])
        assert first.oom_handler() is first.oom_handler()  # type: ignore[attr-defined]
        assert first.oom_handler() is not second.oom_handler()  # type: ignore[attr-defined]

    def test_recovery_options_are_checked_at_decoration(self) -> None:
        with pytest.raises(TypeError, match="enable_cpu_fallbak"):
            with_oom_handling(enable_cpu_fallbak=False)

    def test_device_may_be_omitted_when_defaulted(self, gpu_manager: DeviceManager) -> None:
        @with_oom_handling(Runtime(gpu_manager))
        def work(data: list[int], *, device: DeviceInfo | None = None, batch_size: int = 2) -> str:
            assert isinstance(device, DeviceInfo)
            return f"{device.label}:{batch_size}"

        assert work([1]) == "cuda:0:2"  # auto-selected through the manager

    def test_rejects_functions_without_the_parameters(self) -> None:
        with pytest.raises(TypeError, match="batch_size"):
            @with_oom_handling()
            def work(data: list[int], *, device: DeviceInfo) -> None: ...

    def test_rejects_bad_batch_size(self) -> None:
        @with_oom_handling()
        def work(data: list[int], *, device: DeviceInfo, batch_size: int) -> None: ...

        with pytest.raises(ConfigurationError):
            work([1], device=DeviceInfo(device_type=DeviceType.CPU), batch_size=0)


def test_without_batch_reduction_sizes_are_never_changed(gpu_manager: DeviceManager) -> None:
    cuda0 = gpu_manager.get_optimal_device("cuda:0")
    fixed = OOMHandler(gpu_manager, enable_batch_reduction=False)
    fixed.learn_oom(cuda0, 8)
    assert fixed.ceiling(cuda0) == 7 and fixed.clamp(cuda0, 8) == 8  # learnt, but a fixed size stays fixed
