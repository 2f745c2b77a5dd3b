"""The spec's ``@with_oom_handling`` decorator, over a runtime's one engine."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from ragged.errors import ConfigurationError
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.recovery import OOMHandler, RecoveryOptions
from ragged.gpu.runtime import Runtime
from ragged.gpu.types import DeviceInfo

T = TypeVar("T")
P = ParamSpec("P")


def with_oom_handling(
    handler: OOMHandler | Runtime | None = None,
    *,
    device_arg: str = "device",
    batch_size_arg: str = "batch_size",
    **handler_options: Any,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate ``f(data, *, device, batch_size)`` so that OOMs are recovered.

    The function must process all of its input whatever the batch size, so
    a retry with a smaller batch or on the CPU returns the same result. The
    ``device`` argument may be a :class:`DeviceInfo`, a hint such as
    ``"cuda:1"``, or left out (auto-selected). ``handler`` is the engine to
    use (an :class:`OOMHandler` or a :class:`Runtime`'s); without one, the
    function gets a private runtime, made on its first call (no detection at
    import) with ``handler_options`` (:class:`RecoveryOptions` fields). One
    engine serves every call of the decorated function, so a size that ran
    out of memory once is not tried again by the next call.
    """
    options = RecoveryOptions(**handler_options)  # a misspelt option fails at decoration, not at the first call

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        signature = inspect.signature(fn)
        for name in (device_arg, batch_size_arg):
            if name not in signature.parameters:
                raise TypeError(f"{fn.__qualname__} has no parameter {name!r} to manage.")
        owned: list[OOMHandler] = []

        def engine() -> OOMHandler:
            if isinstance(handler, Runtime):
                return handler.oom_handler
            if handler is not None:
                return handler
            if not owned:
                owned.append(Runtime(recovery=options).oom_handler)
            return owned[0]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            active = engine()
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            hint: DeviceHint = bound.arguments.get(device_arg)
            device = hint if isinstance(hint, DeviceInfo) else active.manager.get_optimal_device(hint)
            batch_size = bound.arguments.get(batch_size_arg)
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ConfigurationError(f"{batch_size_arg} must be a positive integer, got {batch_size!r}.")

            def attempt(dev: DeviceInfo, size: int) -> T:
                bound.arguments[device_arg] = dev
                bound.arguments[batch_size_arg] = size
                return fn(*bound.args, **bound.kwargs)

            return active.run(attempt, device, batch_size, work=fn.__qualname__)

        wrapper.oom_handler = engine  # type: ignore[attr-defined]
        return wrapper

    return decorate


__all__ = ["with_oom_handling"]
