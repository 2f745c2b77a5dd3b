"""What one embedding call did, for people and for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ragged.gpu.batch_runner import RunStats


@dataclass(frozen=True)
class EmbeddingReport:
    """Figures of one call: device, batches, memory (bytes), recoveries, speed."""

    model: str
    device: str
    dtype: str
    items: int
    seconds: float
    batch_sizes: tuple[int, ...]
    peak_bytes: int  # largest batch peak above the model's own memory
    budget_bytes: int | None  # what the sizer allowed a batch
    device_total_bytes: int
    ooms: int
    recoveries: dict[str, int] = field(default_factory=dict)
    cpu_fallback_items: int = 0
    overhead_fraction: float = 0.0  # share of the call spent managing, not embedding

    @property
    def items_per_second(self) -> float:
        """Throughput of the call."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_stats(
        cls, stats: RunStats, *, model: str, dtype: str, device_total_bytes: int
    ) -> EmbeddingReport:
        """Build a report from a runner's statistics."""
        counts = stats.oom.as_dict()
        return cls(
            model=model,
            device=stats.device,
            dtype=dtype,
            items=stats.items,
            seconds=stats.seconds,
            batch_sizes=tuple(stats.batch_sizes),
            peak_bytes=stats.peak_bytes,
            budget_bytes=stats.budget_bytes,
            device_total_bytes=device_total_bytes,
            ooms=counts.pop("ooms"),
            recoveries={k: v for k, v in counts.items() if k != "failures"},
            cpu_fallback_items=stats.cpu_fallback_items,
            overhead_fraction=stats.overhead_fraction,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        data["items_per_second"] = round(self.items_per_second, 3)
        return data
