"""What one embedding call did, for people and for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ragged.gpu.batch_runner import RunStats
from ragged.gpu.model_manager import Placement


@dataclass(frozen=True)
class EmbeddingReport:
    """Figures of one call: device, batches, memory (bytes), recoveries, speed."""

    model: str
    device: str
    dtype: str
    items: int
    seconds: float
    batch_sizes: tuple[int, ...]
    peak_bytes: int | None  # largest batch peak above the model's own memory; None: not measurable
    budget_bytes: int | None  # what the policy allowed a batch at the last decision; None: unreadable
    device_total_bytes: int
    ooms: int
    recoveries: dict[str, int] = field(default_factory=dict)
    cpu_fallback_items: int = 0
    failed_items: int = 0
    overhead_fraction: float = 0.0  # share of the call spent managing, not embedding
    prepare_seconds: float = 0.0  # waiting for preprocessing
    compute_seconds: float = 0.0  # inside the model
    batch_peaks: tuple[int | None, ...] = ()
    prepared_items: int = 0  # items preprocessed (more than ``items`` when preparation was redone)
    model_bytes: int = 0  # the weights on the device
    placement_note: str | None = None  # why the model is not on the requested device
    batch_room_bytes: int | None = None  # the budget the model left for batches when it was placed
    budget_warning: str | None = None

    @property
    def items_per_second(self) -> float:
        """Throughput of the call."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_stats(cls, stats: RunStats, *, model: str, dtype: str, device_total_bytes: int,
                   placement: Placement | None = None, model_bytes: int = 0) -> EmbeddingReport:
        """Build a report from a runner's statistics and the model's placement."""
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
            failed_items=stats.failed_items,
            overhead_fraction=stats.overhead_fraction,
            prepare_seconds=stats.prepare_seconds,
            compute_seconds=stats.compute_seconds,
            batch_peaks=tuple(stats.batch_peaks),
            prepared_items=stats.prepared_items,
            model_bytes=model_bytes,
            placement_note=placement.reason if placement is not None else None,
            batch_room_bytes=placement.batch_room_bytes if placement is not None else None,
            budget_warning=stats.budget_warning,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        data["batch_peaks"] = list(self.batch_peaks)
        data["items_per_second"] = round(self.items_per_second, 3)
        return data
