"""ColPali-family page embedder with GPU resource management.

Pages are PIL images; each comes back as a float32 array of shape
(tokens, dim) with padded positions removed. Batches are planned by each
page's visual tokens, sized from measured memory, and recovered on OOM
without losing a page (see :mod:`ragged.gpu.batch_runner`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image

from ragged.embeddings.cost import prompt_overhead, text_tokens, visual_tokens
from ragged.embeddings.loading import (
    DEFAULT_MODEL,
    default_dtype,
    estimate_model_bytes,
    load_model,
    load_processor,
    resolve_model,
)
from ragged.embeddings.report import EmbeddingReport
from ragged.errors import ConfigurationError
from ragged.gpu.batch_runner import BatchRunner, Stages
from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchSizeConfig
from ragged.gpu.device_manager import DeviceHint, DeviceManager, default_device_manager
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.model_manager import ModelManager
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.types import DeviceInfo
from ragged.paths import cache_dir as default_cache_dir

DEFAULT_FIXED_BATCH_SIZE = 4  # the spec's conservative baseline

Embedding = np.ndarray  # (tokens, dim) float32


def _activation_bytes_per_token(config: Any, dtype: torch.dtype) -> float:
    """A prior for activation memory per sequence token, from the config.

    Inference keeps a few hidden-size and MLP-width vectors per token live
    at once in the language model and the vision tower; the measured fit
    replaces this after the first batch.
    """
    element = torch.empty((), dtype=dtype).element_size()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", 2048)
    mlp = getattr(text, "intermediate_size", 4 * hidden)
    vlm = getattr(config, "vlm_config", config)
    vision = getattr(vlm, "vision_config", None)
    v_hidden = getattr(vision, "hidden_size", 0) or getattr(vision, "embed_dim", 0)
    v_mlp = getattr(vision, "intermediate_size", 4 * v_hidden)
    return 1.5 * element * (6 * hidden + 3 * mlp + 4 * v_hidden + 2 * v_mlp)


class ColPaliEmbedder:
    """Embeds page images and queries with a ColPali-family model.

    ``model_name`` is a hub id, a local folder or a tiny preset. ``device``
    is a hint (``"cuda:1"``, ``"mps"``, ``"cpu"``) or None for automatic
    selection. With ``enable_adaptive_batching`` the batch size is planned
    from memory and throughput (``batch_size`` then caps it); without, every
    batch has ``batch_size`` pages (4 if not given).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        device: DeviceHint = None,
        batch_size: int | None = None,
        cache_dir: str | Path | None = None,
        enable_adaptive_batching: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device_manager: DeviceManager | None = None,
        model_manager: ModelManager | None = None,
        batch_config: BatchSizeConfig | None = None,
        oom_handler: OOMHandler | None = None,
        local_files_only: bool = False,
        query_batch_size: int = 32,
        prefetch: bool | None = None,
    ) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigurationError(f"Batch size must be a positive integer, got {batch_size!r}.")
        self.device_manager = device_manager or default_device_manager()
        self.requested_device = self.device_manager.get_optimal_device(device)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.source = resolve_model(model_name, self.cache_dir, local_files_only=local_files_only)
        self.model_name = model_name
        self.dtype = dtype or default_dtype(
            self.requested_device, self.device_manager.supports_bf16(self.requested_device)
        )
        self.enable_adaptive_batching = enable_adaptive_batching
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        self.prefetch = prefetch  # prepare the next batch while the device computes; None: on accelerators
        config = batch_config or BatchSizeConfig()
        if batch_size is not None and enable_adaptive_batching:
            config = replace(config, max_batch_size=batch_size,
                             initial_batch_size=min(config.initial_batch_size, batch_size),
                             min_batch_size=min(config.min_batch_size, batch_size))
        self.batch_config = config
        self.oom_handler = oom_handler or OOMHandler(self.device_manager)
        self.model_manager = model_manager or ModelManager(self.device_manager, idle_timeout_s=None)
        self._owns_model_manager = model_manager is None
        self.processor = load_processor(self.source, self.cache_dir)
        self._key = f"{self.source.location}|{self.dtype}"
        self._size_bytes = estimate_model_bytes(self.source, self.dtype)
        self._cpu_model: Any = None
        self._sizer: AdaptiveBatchSizer | None = None
        self._monitor: MemoryMonitor | None = None
        self.last_report: EmbeddingReport | None = None
        self.prompt_tokens = prompt_overhead(self.processor)  # per page, besides its visual tokens
        _ = self.model  # load now, so errors surface at construction

    # -- model and device -------------------------------------------------

    def _load(self, device: DeviceInfo) -> torch.nn.Module:
        dtype = self.dtype if device.same_device(self.requested_device) else torch.float32
        return load_model(self.source, device, dtype, self.cache_dir)  # type: ignore[no-any-return]

    @property
    def model(self) -> Any:
        """The loaded model (loaded again if the model manager unloaded it)."""
        return self.model_manager.load(self._key, self._load, self._size_bytes, self.requested_device)

    @property
    def device(self) -> DeviceInfo:
        """Where the model runs (the CPU if it did not fit on the device)."""
        _ = self.model
        return self.model_manager.loaded[self._key].device

    @property
    def memory_monitor(self) -> MemoryMonitor:
        """The monitor of the model's device."""
        device = self.device
        if self._monitor is None or not self._monitor.device.same_device(device):
            self._monitor = MemoryMonitor(device, self.device_manager)
        return self._monitor

    @property
    def batch_sizer(self) -> AdaptiveBatchSizer | None:
        """The sizer of the model's device (None without adaptive batching).

        It lives as long as the embedder, so what one call measures sizes
        the next call's batches."""
        if not self.enable_adaptive_batching:
            return None
        device = self.device
        if self._sizer is None or not self._sizer.device.same_device(device):
            prior = _activation_bytes_per_token(self.model.config, self.dtype)
            self._sizer = AdaptiveBatchSizer(
                device, self.memory_monitor, self.batch_config, self.device_manager, prior_bytes_per_load=prior
            )
        return self._sizer

    def _model_for(self, device: DeviceInfo) -> Any:
        if device.same_device(self.device):
            return self.model
        if self._cpu_model is None:  # the OOM last resort: a float32 copy on the CPU
            self._cpu_model = self._load(device)
        return self._cpu_model

    # -- embedding --------------------------------------------------------

    def embed_images(
        self, images: Sequence[Image.Image], on_batch: Callable[[int], None] | None = None
    ) -> list[Embedding]:
        """One (tokens, dim) float32 array per page, in input order.

        ``on_batch(n)`` is called after each batch of ``n`` pages (progress)."""
        pages = list(images)
        for i, page in enumerate(pages):
            if not isinstance(page, Image.Image):
                raise ConfigurationError(f"Page {i} is a {type(page).__name__}, not a PIL image.")
        if not pages:
            return []
        if self.enable_adaptive_batching:
            costs = [t + self.prompt_tokens for t in visual_tokens(self.processor, pages)]
        else:
            costs = [0] * len(pages)  # a plain fixed-batch run keeps input order

        stages: Stages[Any, Embedding] = Stages(
            prepare=lambda indices: self.processor.process_images([pages[i] for i in indices]),
            compute=self._forward,
        )
        return self._run(costs, stages, self.batch_size or DEFAULT_FIXED_BATCH_SIZE, on_batch=on_batch)

    def embed_batch(self, images: Sequence[Image.Image]) -> list[Embedding]:
        """The spec's name for :meth:`embed_images`."""
        return self.embed_images(images)

    def embed_queries(self, texts: Sequence[str]) -> list[Embedding]:
        """One (tokens, dim) float32 array per query, in input order."""
        queries = list(texts)
        if not queries:
            return []
        costs = text_tokens(self.processor, queries)

        stages: Stages[Any, Embedding] = Stages(
            prepare=lambda indices: self.processor.process_queries([queries[i] for i in indices]),
            compute=self._forward,
        )
        return self._run(costs, stages, self.query_batch_size, adaptive=False)

    def _run(
        self,
        costs: list[int],
        stages: Stages[Any, Embedding],
        fixed: int,
        adaptive: bool | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Embedding]:
        use_sizer = self.enable_adaptive_batching if adaptive is None else adaptive
        device = self.device
        runner: BatchRunner[Embedding] = BatchRunner(
            device,
            self.batch_sizer if use_sizer else None,
            self.oom_handler,
            monitor=self.memory_monitor,
            fixed_batch_size=None if use_sizer else fixed,
            prefetch=self.prefetch,
        )
        try:
            with self.model_manager.using(self._key):
                results, stats = runner.run(costs, stages, on_batch)
        finally:
            self._cpu_model = None  # release the fallback copy
        model_dtype = next(self.model.parameters()).dtype  # float32 if the model fell back to the CPU
        self.last_report = EmbeddingReport.from_stats(
            stats, model=self.model_name, dtype=str(model_dtype).removeprefix("torch."),
            device_total_bytes=device.total_memory,
        )
        return results

    def _forward(self, inputs: Any, device: DeviceInfo) -> list[Embedding]:
        model = self._model_for(device)
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
        return [vectors[j][mask[j]].numpy() for j in range(vectors.shape[0])]  # each (kept, dim)

    # -- scoring ----------------------------------------------------------

    def score(self, query_embeddings: Sequence[Embedding], page_embeddings: Sequence[Embedding]) -> np.ndarray:
        """MaxSim scores, shape (queries, pages), by the processor's own scoring."""
        if not query_embeddings or not page_embeddings:
            return np.zeros((len(query_embeddings), len(page_embeddings)), dtype=np.float32)
        device = self.device.torch_device
        qs = [torch.as_tensor(q, dtype=torch.float32).to(device) for q in query_embeddings]  # each (q_tokens, dim)
        ps = [torch.as_tensor(p, dtype=torch.float32).to(device) for p in page_embeddings]  # each (p_tokens, dim)
        if hasattr(self.processor, "score_retrieval"):  # transformers' processors
            scores = self.processor.score_retrieval(qs, ps, output_dtype=torch.float32)  # (queries, pages)
        else:  # colpali-engine's
            scores = self.processor.score_multi_vector(qs, ps)  # (queries, pages)
        return np.asarray(scores.float().cpu().numpy(), dtype=np.float32)

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Release the model if this embedder owns its model manager; a shared
        manager keeps it for other users and unloads it when idle."""
        self._cpu_model = None
        if self._owns_model_manager:
            self.model_manager.close()

    def __enter__(self) -> ColPaliEmbedder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
