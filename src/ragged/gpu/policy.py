"""The one memory policy: how much of a device ragged lets itself use.

Every part that decides about memory (the batch sizer, the model manager,
search and the memory monitor) reads the same :class:`MemoryPolicy`, so a
model is never admitted where its batches would have no room, and the
levels the monitor warns at sit above the line batches are planned to.

The line is the spec's ``total x (target_utilisation - safety_margin)``
(65% of the device by default). Unlike the spec's formula, what is in use
already (the model's weights, other processes) counts against the line: a
batch may use the headroom between what is in use now and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ragged.errors import ConfigurationError
from ragged.gpu.types import MemoryInfo


class MemoryLevel(StrEnum):
    """Where utilisation stands against the warning and critical levels."""

    NORMAL = "normal"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class MemoryPolicy:
    """Target, margin and alert levels; fractions of the device's total.

    ``target_utilisation`` and ``safety_margin`` set the line everything in
    use should stay under; ``warning_pct`` and ``critical_pct`` are the
    monitor's alert levels (percent of total, every process counted).
    """

    target_utilisation: float = 0.75
    safety_margin: float = 0.10
    warning_pct: float = 85.0
    critical_pct: float = 95.0

    def __post_init__(self) -> None:
        if not 0 < self.target_utilisation <= 1 or not 0 <= self.safety_margin < self.target_utilisation:
            raise ConfigurationError(
                "The memory target must be in (0, 1] and the safety margin in [0, target) "
                f"(got target={self.target_utilisation}, margin={self.safety_margin})."
            )
        if not 0 < self.warning_pct <= self.critical_pct <= 100:
            raise ConfigurationError(
                "Memory levels must satisfy 0 < warning <= critical <= 100 "
                f"(got warning={self.warning_pct}, critical={self.critical_pct})."
            )

    @property
    def line_fraction(self) -> float:
        """Share of a device that everything in use should stay under."""
        return self.target_utilisation - self.safety_margin

    def line_bytes(self, total: int) -> int:
        """The line on a device of ``total`` bytes."""
        return int(total * self.line_fraction)

    def batch_budget(self, info: MemoryInfo | None) -> int | None:
        """Bytes one batch may use on top of what is in use now.

        None when the device could not be read (unknown is not zero). Blocks
        our own caching allocator holds but does not use count as free.
        """
        if info is None:
            return None
        used = info.total - info.available
        return max(0, self.line_bytes(info.total) - used)

    def room_after(self, info: MemoryInfo | None, extra_bytes: int) -> int | None:
        """The batch budget once ``extra_bytes`` more are held (a model being loaded)."""
        budget = self.batch_budget(info)
        return None if budget is None else budget - extra_bytes

    def admits(self, info: MemoryInfo | None, model_bytes: int, work_bytes: int) -> bool:
        """True when a model of ``model_bytes`` fits under the line with room
        for one item of its work (``work_bytes``). An unreadable device admits
        nothing: loading blind is how out-of-memory crashes start."""
        room = self.room_after(info, model_bytes)
        return room is not None and room >= work_bytes

    def level(self, utilisation_pct: float) -> MemoryLevel:
        """The alert level of ``utilisation_pct``."""
        if utilisation_pct >= self.critical_pct:
            return MemoryLevel.CRITICAL
        if utilisation_pct >= self.warning_pct:
            return MemoryLevel.WARNING
        return MemoryLevel.NORMAL

    def describe(self) -> str:
        """One line for reports: ``target 75%, margin 10% (line 65%)``."""
        return (f"target {100 * self.target_utilisation:.0f}%, margin {100 * self.safety_margin:.0f}% "
                f"(line {100 * self.line_fraction:.0f}%)")
