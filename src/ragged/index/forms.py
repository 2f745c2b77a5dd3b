"""Which form a resident index takes: the memory policy decides.

A long-lived process (``ragged serve``) holds what it searches in the
fastest form that fits, tried in this order:

=================================  ============================================
form                               holds
=================================  ============================================
``fp16 on <dev>``                  every vector and the candidate stage on the
                                   accelerator: no upload per search
``stage on <dev>, vectors mapped`` the candidate stage on the accelerator; the
                                   candidates' vectors read from the mapped
                                   segment files and uploaded per search
``f32 in RAM``                     every vector as f32 columns (the layout the
                                   CPU kernel reads) and the stage
``fp16 in RAM``                    every vector in fp16 (half the memory) and
                                   the stage in f32
``stage in RAM, vectors mapped``   the stage in f32 (8 KiB a page at width
                                   128); the candidates' vectors (and a full
                                   scan's, with ``exact``) read from the mapped
                                   segment files, where the page cache keeps
                                   the pages searched often
``streamed``                       nothing: the segment files, as a one-off
                                   search reads them
=================================  ============================================

A form fits when it needs at most :data:`RESIDENT_SHARE` of the policy's
budget, the resident copy itself not counted as used (it would otherwise
count against its own test). A larger form is taken only below
:data:`ENTER_SHARE` of that limit, and kept until past it, so an index
near the line does not flip between forms (a full reload each time) at
every commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragged.gpu.types import DeviceInfo

RESIDENT_SHARE = 0.5  # of the device's batch budget the resident copy may take
ENTER_SHARE = 0.8  # of that limit, below which a larger form is taken (hysteresis)
STREAMED = "streamed"
_ALLOWED = "half the memory policy's budget"


@dataclass(frozen=True)
class FormChoice:
    """The form chosen, and why (for the start-up line and ``/metrics``)."""

    form: str
    reason: str
    element_bytes: int = 0  # per element of every page's vectors held (0: mapped or streamed)
    stage: bool = False  # the candidate stage is held
    stage_element_bytes: int = 0  # per element of the stage held

    @property
    def holds(self) -> bool:
        """True when the form holds anything in memory."""
        return self.element_bytes > 0 or self.stage

    def holds_as(self, other: FormChoice) -> bool:
        """True when ``other`` holds the same things in the same precision
        (the reason, which quotes the memory figures of the moment, aside)."""
        return ((self.form, self.element_bytes, self.stage, self.stage_element_bytes)
                == (other.form, other.element_bytes, other.stage, other.stage_element_bytes))


def _forms(device: DeviceInfo) -> list[tuple[str, int, int]]:
    """(form, bytes per vector element, bytes per stage element), largest first."""
    if device.is_accelerator:
        return [(f"fp16 on {device.label}", 2, 2), (f"stage on {device.label}, vectors mapped", 0, 2)]
    return [("f32 in RAM", 4, 4), ("fp16 in RAM", 2, 4), ("stage in RAM, vectors mapped", 0, 4)]


def choose_form(vectors: int, pooled: int, dim: int, device: DeviceInfo, budget: int | None,
                current: str) -> FormChoice:
    """The largest form that fits ``budget`` (bytes the policy allows, the
    resident copy not counted) for ``vectors`` page vectors and ``pooled``
    vectors of the candidate stage, with hysteresis around ``current``."""
    if budget is None:
        return FormChoice(STREAMED, f"the memory of {device.label} cannot be read")
    limit = budget * RESIDENT_SHARE
    tried = []
    for form, element, stage_element in _forms(device):
        if not element and not pooled:  # an index from before the stage: holding nothing is streaming
            tried.append("no candidate stage yet (the next 'ragged ingest' builds it)")
            continue
        need = vectors * dim * element + pooled * dim * stage_element
        allowed = limit if form == current else limit * ENTER_SHARE
        if need <= allowed:
            fits = f"needs {need / 2**20:,.0f} MiB of {limit / 2**20:,.0f} MiB allowed ({_ALLOWED})"
            return FormChoice(form, "; ".join([*tried, fits]), element, pooled > 0, stage_element)
        tried.append(f"{form} would need {need / 2**20:,.0f} MiB")
    return FormChoice(STREAMED, f"{'; '.join(tried)}; {limit / 2**20:,.0f} MiB allowed ({_ALLOWED})")
