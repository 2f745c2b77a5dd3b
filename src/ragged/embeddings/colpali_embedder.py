"""ColPali-family page embedder with GPU resource management.

Pages are PIL images; each comes back as a float32 array of shape
(tokens, dim) with padded positions removed. Batches are planned by each
page's visual tokens, sized from measured memory, and recovered on OOM
without losing a page: the embedder is a thin layer over
:class:`~ragged.gpu.managed.ManagedBatchJob`, under the
:class:`~ragged.gpu.runtime.Runtime` it is given (or a private one).
Every call returns its results and report as values
(:class:`~ragged.embeddings.report.Embedded`); nothing of a call is kept on
the embedder, so threads can share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from loguru import logger
from PIL import Image

from ragged.embeddings.cost import PageView, prompt_overhead, text_tokens, visual_tokens
from ragged.embeddings.loading import (
    activation_bytes_per_token,
    estimate_model_bytes,
    load_model,
    load_processor,
    resolve_model,
    torch_dtype,
)
from ragged.embeddings.names import DEFAULT_MODEL
from ragged.embeddings.report import Embedded, EmbeddingReport, Notice
from ragged.errors import ConfigurationError
from ragged.gpu.batch_runner import Stages
from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchSizeConfig
from ragged.gpu.compat.methods import SpecEmbedding
from ragged.gpu.device_manager import DeviceHint, DeviceManager
from ragged.gpu.managed import ManagedBatchJob
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.model_manager import ModelManager, Placement
from ragged.gpu.recovery import OOMHandler
from ragged.gpu.runtime import Runtime
from ragged.gpu.stats import RunStats
from ragged.gpu.types import DeviceInfo
from ragged.multivector.grid import PatchGrid
from ragged.multivector.maxsim import maxsim_scores
from ragged.paths import cache_dir as default_cache_dir

DEFAULT_FIXED_BATCH_SIZE = 4  # the spec's conservative baseline
MAX_QUERY_TOKENS = 512  # a query longer than this is cut (with a notice): scoring cost grows with its tokens
PAGES, QUERIES = "pages", "queries"  # kinds of work: each learns its own batch sizes and OOM ceilings
_TYPICAL_PAGE = (1275, 1650)  # a letter page at 150 dpi, for the memory one page needs

Embedding = np.ndarray  # (tokens, dim) float32


@dataclass(frozen=True)
class PageVectors:
    """One page's vectors, and where its image patches sit among them
    (None where the model's patches do not form one grid, as with tiles)."""

    vectors: Embedding  # (tokens, dim) float32
    grid: PatchGrid | None = None


class ColPaliEmbedder(SpecEmbedding):
    """Embeds page images and queries with a ColPali-family model.

    ``model_name`` is a hub id, a local folder or a tiny preset. ``device``
    is a hint (``"cuda:1"``, ``"mps"``, ``"cpu"``) or None / ``"auto"`` for
    automatic selection; an explicit device is honoured or refused, only
    ``auto`` falls back to the CPU. With ``enable_adaptive_batching`` the
    batch size is planned from memory and throughput (``batch_size`` then
    caps it); without, every batch has ``batch_size`` pages (4 if not given).
    ``runtime`` is the program's resource manager (device manager, memory
    policy, OOM engine, model manager); without one the embedder makes a
    private runtime and closes it with itself.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        device: DeviceHint = None,
        batch_size: int | None = None,
        cache_dir: str | Path | None = None,
        enable_adaptive_batching: bool = True,
        *,
        runtime: Runtime | None = None,
        dtype: torch.dtype | None = None,
        batch_config: BatchSizeConfig | None = None,
        local_files_only: bool = False,
        query_batch_size: int = 32,
        max_query_tokens: int = MAX_QUERY_TOKENS,
        prefetch: bool | None = None,
    ) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigurationError(f"Batch size must be a positive integer, got {batch_size!r}.")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.source = resolve_model(model_name, self.cache_dir, local_files_only=local_files_only)
        self.model_name = model_name
        self.enable_adaptive_batching = enable_adaptive_batching
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        self.max_query_tokens = max_query_tokens
        self._owns_runtime = runtime is None
        self.runtime = runtime if runtime is not None else Runtime()
        config = batch_config or self.runtime.batch_config
        if batch_size is not None and enable_adaptive_batching:
            config = replace(config, max_batch_size=batch_size, min_batch_size=min(config.min_batch_size, batch_size))
        self.processor = load_processor(self.source, self.cache_dir)
        self.prompt_tokens = prompt_overhead(self.processor)  # per page, besides its visual tokens
        dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else None
        self.job = ManagedBatchJob(
            self.source.location,
            self._load,
            lambda _device, name: estimate_model_bytes(self.source, torch_dtype(name)),
            runtime=self.runtime,
            name=model_name,
            device=device,
            dtype=dtype_name,
            batch_config=config,
            prefetch=prefetch,
        )
        prior = activation_bytes_per_token(self._config(), self.job.dtype)
        self.job.prior_bytes_per_load = prior
        page = Image.new("RGB", _TYPICAL_PAGE, "white")
        self.job.work_bytes = int(prior * (visual_tokens(self.processor, [page])[0] + self.prompt_tokens))
        try:
            self.job.model()  # load now, so errors surface at construction
        except BaseException:
            self.close()
            raise

    def _config(self) -> Any:
        try:
            cls = self.source.family.model_cls()
            return cls.config_class.from_dict(self.source.config)
        except Exception:  # an unusual config class: read it off the loaded model
            return self.job.model().config

    # -- model and device -------------------------------------------------

    def _load(self, device: DeviceInfo, dtype_name: str) -> torch.nn.Module:
        return load_model(self.source, device, torch_dtype(dtype_name), self.cache_dir)  # type: ignore[no-any-return]

    @property
    def device_manager(self) -> DeviceManager:
        """The device manager every hardware question goes through (the runtime's)."""
        return self.runtime.device_manager

    @property
    def model_manager(self) -> ModelManager:
        """The manager that holds the model (the runtime's)."""
        return self.runtime.model_manager

    @property
    def oom_handler(self) -> OOMHandler:
        """The one recovery engine (the runtime's, with what its OOMs taught)."""
        return self.runtime.oom_handler

    @property
    def batch_config(self) -> BatchSizeConfig:
        """Batch-size parameters and the memory policy."""
        return self.job.batch_config

    @property
    def requested_device(self) -> DeviceInfo:
        """The device resolved from the hint."""
        return self.job.requested_device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype on the requested device (the CPU always computes in float32)."""
        return torch_dtype(self.job.dtype)

    @property
    def model(self) -> Any:
        """The model, loaded (again, after an idle unload) if needed."""
        return self.job.model()

    @property
    def device(self) -> DeviceInfo:
        """Where the model runs, from its latest placement; never loads it."""
        return self.job.device

    @property
    def placement(self) -> Placement | None:
        """Where the model was placed and why (None before the first load)."""
        return self.job.placement

    @property
    def memory_monitor(self) -> MemoryMonitor:
        """The monitor of the model's device."""
        return self.runtime.monitor_for(self.device)

    @property
    def batch_sizer(self) -> AdaptiveBatchSizer | None:
        """The page sizer of the model's device (None without adaptive batching).

        It lives as long as the embedder, so what one call measures sizes
        the next call's batches."""
        return self.job.sizer_for(self.device, PAGES) if self.enable_adaptive_batching else None

    # -- embedding --------------------------------------------------------

    def embed_images(
        self, images: Sequence[Image.Image], on_batch: Callable[[int], None] | None = None
    ) -> list[Embedding]:
        """One (tokens, dim) float32 array per page, in input order.

        ``on_batch(n)`` is called after each batch of ``n`` pages (progress).
        A page that cannot be embedded even on the CPU raises
        :class:`~ragged.errors.OutOfMemoryRecoveryError`."""
        return [r.vectors for r in self.embed_pages(images, on_batch, keep_going=False).values()]

    def embed_pages(
        self, images: Sequence[Image.Image], on_batch: Callable[[int], None] | None = None, *,
        keep_going: bool = True,
    ) -> Embedded[PageVectors]:
        """Every page's vectors and patch grid, and the call's report. With
        ``keep_going`` a page that cannot be embedded comes back as an
        :class:`~ragged.gpu.batch_runner.ItemFailure` and the others are still
        embedded; without, it raises
        :class:`~ragged.errors.OutOfMemoryRecoveryError`."""
        return self._embed_pages(images, on_batch, keep_going=keep_going)

    def page_view_size(self, width: int, height: int) -> tuple[int, int]:
        """The largest size a page of ``width x height`` pixels needs to be for
        this model (pages are rendered or scaled to it before being held)."""
        return self.page_view.fit(width, height)

    @property
    def page_view(self) -> PageView:
        """This model's page-size rule, as plain data."""
        return PageView.of(self.processor)

    def _embed_pages(self, images: Sequence[Image.Image], on_batch: Callable[[int], None] | None,
                     keep_going: bool) -> Embedded[PageVectors]:
        pages = list(images)
        for i, page in enumerate(pages):
            if not isinstance(page, Image.Image):
                raise ConfigurationError(f"Page {i} is a {type(page).__name__}, not a PIL image.")
        if not pages:
            return Embedded([], self._report(RunStats(device=self.device.label), self.placement))
        if self.enable_adaptive_batching:
            costs = [t + self.prompt_tokens for t in visual_tokens(self.processor, pages)]
        else:
            costs = [0] * len(pages)  # a plain fixed-batch run keeps input order
        stages: Stages[Any, PageVectors] = Stages(
            prepare=lambda indices: self.processor.process_images([pages[i] for i in indices]),
            compute=self._forward_pages,
        )
        fixed = None if self.enable_adaptive_batching else self.batch_size or DEFAULT_FIXED_BATCH_SIZE
        results, stats, placement = self.job.run(costs, stages, work=PAGES, fixed_batch_size=fixed,
                                                 on_batch=on_batch, keep_going=keep_going)
        return Embedded(results, self._report(stats, placement))

    def embed_queries(self, texts: Sequence[str]) -> list[Embedding]:
        """One (tokens, dim) float32 array per query, in input order (see
        :meth:`encode_queries` for the notices and the report)."""
        return self.encode_queries(texts).values()

    def encode_queries(self, texts: Sequence[str]) -> Embedded[Embedding]:
        """One (tokens, dim) float32 array per query, in input order, with
        the call's report and notices: a query longer than
        ``max_query_tokens`` is cut there, and a notice says so for the
        caller to show (a CLI note, the server's answer)."""
        bounded = [self._bounded(t) for t in texts]
        queries = [text for text, _ in bounded]
        notices = tuple(Notice(i, notice) for i, (_, notice) in enumerate(bounded) if notice is not None)
        if not queries:
            return Embedded([], self._report(RunStats(device=self.device.label), self.placement), notices)
        costs = text_tokens(self.processor, queries)
        stages: Stages[Any, Embedding] = Stages(
            prepare=lambda indices: self.processor.process_queries([queries[i] for i in indices]),
            compute=self._forward_queries,
        )
        results, stats, placement = self.job.run(costs, stages, work=QUERIES, fixed_batch_size=self.query_batch_size)
        return Embedded(results, self._report(stats, placement), notices)

    def query_tokens(self, text: str) -> tuple[list[str], set[str]]:
        """The tokens whose vectors :meth:`embed_queries` gives for ``text``, in
        order, and which of them are special (prompt, padding, markers)."""
        inputs = self.processor.process_queries([self._bounded(text)[0]])
        ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
        tokenizer = self.processor.tokenizer
        return list(tokenizer.convert_ids_to_tokens(ids)), set(tokenizer.all_special_tokens)

    def _bounded(self, text: str) -> tuple[str, str | None]:
        """``text`` cut to what the model takes, and the notice saying so (None: whole)."""
        tokenizer = self.processor.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_query_tokens:
            return text, None
        notice = f"Query cut to its first {self.max_query_tokens} tokens (it had {len(ids):,})."
        logger.debug("{}", notice)  # the caller shows it (a note, the server's answer)
        return str(tokenizer.decode(ids[: self.max_query_tokens])), notice

    def _report(self, stats: RunStats, placement: Placement | None) -> EmbeddingReport:
        device = placement.device if placement is not None else self.device
        return EmbeddingReport.from_stats(
            stats, model=self.model_name, dtype=self.job.dtype_on(device),
            device_total_bytes=device.total_memory, placement=placement, model_bytes=self.job.size_on(device),
        )

    def _forward_queries(self, inputs: Any, device: DeviceInfo) -> list[Embedding]:
        vectors, mask, _ = self._forward(inputs, device)
        return [vectors[j][mask[j]].numpy() for j in range(vectors.shape[0])]  # each (kept, dim)

    def _forward_pages(self, inputs: Any, device: DeviceInfo) -> list[PageVectors]:
        vectors, mask, ids = self._forward(inputs, device)
        thw = inputs.get("image_grid_thw")  # (pages, 3) for Qwen2-VL: frames, patch rows, patch columns
        merge = int(getattr(self.processor.image_processor, "merge_size", 1) or 1)
        out = []
        for j in range(vectors.shape[0]):
            kept = vectors[j][mask[j]].numpy()  # (kept, dim)
            shape = (int(thw[j][1]) // merge, int(thw[j][2]) // merge) if thw is not None else None
            out.append(PageVectors(kept, _patch_grid(ids[j][mask[j]], self._image_token_id, shape)))
        return out

    @property
    def _image_token_id(self) -> int | None:
        token = getattr(self.processor, "image_token_id", None)
        return int(token) if isinstance(token, int) else None

    def _forward(self, inputs: Any, device: DeviceInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(vectors (batch, tokens, dim) f32, mask (batch, tokens), input ids), all on the CPU."""
        model = self.job.model_for(device)
        dtype = next(model.parameters()).dtype
        batch = {
            k: (v.to(device.torch_device, dtype=dtype) if v.is_floating_point() else v.to(device.torch_device))
            for k, v in inputs.items()
            if k != "labels" and isinstance(v, torch.Tensor)
        }
        with torch.inference_mode():
            out = model(**batch)
        out = getattr(out, "embeddings", out)  # transformers' output record, or colpali-engine's tensor
        # out: (batch, tokens, dim)
        vectors = out.float().cpu()  # (batch, tokens, dim)
        mask = batch["attention_mask"].bool().cpu()  # (batch, tokens)
        return vectors, mask, batch["input_ids"].cpu()

    # -- scoring ----------------------------------------------------------

    def score(self, query_embeddings: Sequence[Embedding], page_embeddings: Sequence[Embedding]) -> np.ndarray:
        """Exact MaxSim scores, shape (queries, pages), by the index's own kernel."""
        return maxsim_scores(list(query_embeddings), list(page_embeddings))

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Release the model if this embedder owns its runtime; a shared
        runtime keeps it for other users (and unloads it when idle or closed)."""
        if hasattr(self, "job"):
            self.job.release_fallback()
        if self._owns_runtime:
            self.runtime.close()

    def __enter__(self) -> ColPaliEmbedder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _patch_grid(ids: torch.Tensor, image_token: int | None, shape: tuple[int, int] | None) -> PatchGrid | None:
    """Where the image patches of one sequence (``ids``, padding removed) sit:
    one run of image tokens forming ``shape`` (or a square when not given)."""
    if image_token is None:
        return None
    positions = (ids == image_token).nonzero().flatten()  # (image tokens,)
    count = int(positions.numel())
    if count == 0 or int(positions[-1] - positions[0]) + 1 != count:
        return None  # tiles separated by other tokens (Idefics3): no single grid
    if shape is None:
        side = math.isqrt(count)
        shape = (side, side)
    rows, cols = shape
    return PatchGrid(int(positions[0]), rows, cols) if rows * cols == count else None


__all__ = ["DEFAULT_FIXED_BATCH_SIZE", "MAX_QUERY_TOKENS", "ColPaliEmbedder", "Embedding", "PageVectors"]
