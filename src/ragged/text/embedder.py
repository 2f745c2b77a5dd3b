"""A sentence-embedding model under ragged's resource management.

The text side runs through the same machinery as the vision side: a
:class:`~ragged.gpu.managed.ManagedBatchJob` places the model under the
:class:`~ragged.gpu.runtime.Runtime` it is given (whose one model manager
holds both models, under one memory budget), batches are planned by token
count and sized from measured memory, and an OOM splits a batch without
losing a passage. The model itself is plain transformers (``AutoModel``),
pooled and normalised the way its sentence-transformers config says.
Calls return their vectors, report and notices as values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from ragged.embeddings.hf import quiet_transformers
from ragged.embeddings.loading import activation_bytes_per_token, count_on_meta, torch_dtype, weights_bytes
from ragged.embeddings.report import Embedded, EmbeddingReport, Notice
from ragged.errors import ModelError
from ragged.gpu.batch_runner import Stages
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.managed import ManagedBatchJob
from ragged.gpu.model_manager import Placement
from ragged.gpu.runtime import Runtime
from ragged.gpu.stats import RunStats
from ragged.gpu.types import DeviceInfo
from ragged.paths import cache_dir as default_cache_dir
from ragged.text.model import DEFAULT_TEXT_MODEL, TextModelSource, resolve_text_model
from ragged.text.passages import Passage, split_passages

PASSAGES, TEXT_QUERIES = "passages", "text-queries"


def stack(run: Embedded[np.ndarray], dim: int) -> np.ndarray:
    """A call's vectors as one (items, dim) float32 array."""
    vectors = run.values()  # one per item, in order
    if not vectors:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack(vectors).astype(np.float32)  # (items, dim)


class TextEmbedder:
    """Embeds passages and queries with a sentence-embedding model, under
    ``runtime`` (a private one when not given, closed with the embedder)."""

    def __init__(
        self,
        model_name: str = DEFAULT_TEXT_MODEL,
        device: DeviceHint = None,
        *,
        runtime: Runtime | None = None,
        cache_dir: str | Path | None = None,
        prefetch: bool | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.source: TextModelSource = resolve_text_model(model_name, self.cache_dir)
        with quiet_transformers():
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(self.source.folder)
            except Exception as exc:
                raise ModelError(f"Loading the tokenizer of text model {model_name!r} failed: {exc}") from exc
            config = AutoConfig.from_pretrained(self.source.folder)
        counts = count_on_meta(lambda: AutoModel.from_config(config))
        if counts is None:
            raise ModelError(f"Text model {model_name!r} cannot be built from its config; check its folder.")

        def size(device: DeviceInfo, dtype: str) -> int:
            return weights_bytes(counts, torch_dtype(dtype))

        self._owns_runtime = runtime is None
        self.runtime = runtime if runtime is not None else Runtime()
        self.job = ManagedBatchJob(f"text:{self.source.folder}", self._load, size, runtime=self.runtime,
                                   name=self.source.name.rsplit("/", 1)[-1], device=device, prefetch=prefetch)
        self.job.prior_bytes_per_load = activation_bytes_per_token(config, self.job.dtype)  # refitted on measurement
        self.job.work_bytes = int(self.job.prior_bytes_per_load * self.source.max_tokens)

    @property
    def name(self) -> str:
        """What the index records for this model."""
        return self.source.name

    @property
    def dim(self) -> int:
        """Vector width."""
        return self.source.dim

    @property
    def device(self) -> DeviceInfo:
        """Where the model runs (latest placement); never loads it."""
        return self.job.device

    def _load(self, device: DeviceInfo, dtype: str) -> torch.nn.Module:
        from transformers import AutoModel

        try:
            with quiet_transformers():
                model = AutoModel.from_pretrained(self.source.folder, dtype=torch_dtype(dtype))
        except Exception as exc:
            raise ModelError(f"Loading text model {self.source.name!r} failed: {exc}") from exc
        return model.to(device.torch_device).eval()  # type: ignore[no-any-return]

    # -- text ---------------------------------------------------------------

    def passages(self, text: str | None) -> list[Passage]:
        """A page's text as passages that fit the model."""
        return split_passages(self.tokenizer, text or "", self.source.max_tokens)

    def embed_passages(self, passages: Sequence[Passage],
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """One vector per passage, (passages, dim) float32, in input order."""
        return stack(self.encode_passages(passages, on_batch), self.dim)

    def encode_passages(self, passages: Sequence[Passage],
                        on_batch: Callable[[int], None] | None = None) -> Embedded[np.ndarray]:
        """One (dim,) vector per passage, in input order, and the call's report."""
        return self._embed([list(p.ids) for p in passages], PASSAGES, on_batch)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per query, (queries, dim) float32 (see :meth:`encode_queries`)."""
        return stack(self.encode_queries(texts), self.dim)

    def encode_queries(self, texts: Sequence[str]) -> Embedded[np.ndarray]:
        """One (dim,) vector per query, with the call's report and notices: a
        query longer than the model takes is cut to it, and a notice says so."""
        limit = self.source.max_tokens - 2  # room for the model's start and end tokens
        whole = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        notices = tuple(Notice(n, f"Query cut to its first {limit} tokens for the text model (it had {len(i):,}).")
                        for n, i in enumerate(whole) if len(i) > limit)
        run = self._embed([i[:limit] for i in whole], TEXT_QUERIES, None)
        return Embedded(run.results, run.report, notices)

    def _embed(self, ids: list[list[int]], work: str,
               on_batch: Callable[[int], None] | None) -> Embedded[np.ndarray]:
        if not ids:
            return Embedded([], self._report(RunStats(device=self.device.label), self.job.placement))
        stages: Stages[Any, np.ndarray] = Stages(prepare=lambda idx: self._batch([ids[i] for i in idx]),
                                                 compute=self._forward)
        results, stats, placement = self.job.run([len(x) + 2 for x in ids], stages, work=work, on_batch=on_batch)
        return Embedded(results, self._report(stats, placement))

    @cached_property
    def _special(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text ([CLS], [SEP], ...)."""
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x")["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
        return list(full[:at]), list(full[at + len(plain):])

    def _batch(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        before, after = self._special
        encoded = [before + x + after for x in ids]
        padded = self.tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}

    def _forward(self, inputs: dict[str, torch.Tensor], device: DeviceInfo) -> list[np.ndarray]:
        model = self.job.model_for(device)
        batch = {k: v.to(device.torch_device) for k, v in inputs.items()}
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state.float()  # (batch, tokens, hidden)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, tokens, 1)
        if self.source.pooling == "cls":
            pooled = hidden[:, 0]  # (batch, hidden)
        elif self.source.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)  # (batch, hidden)
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (batch, hidden)
        if self.source.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return list(pooled.cpu().numpy())  # each (hidden,)

    def _report(self, stats: RunStats, placement: Placement | None) -> EmbeddingReport:
        device = placement.device if placement is not None else self.device
        return EmbeddingReport.from_stats(stats, model=self.source.name, dtype=self.job.dtype_on(device),
                                          device_total_bytes=device.total_memory, placement=placement,
                                          model_bytes=self.job.size_on(device))

    def close(self) -> None:
        """Release the model if this embedder owns its runtime (a shared one
        keeps it for other users, and unloads it when idle or closed)."""
        self.job.release_fallback()
        if self._owns_runtime:
            self.runtime.close()

    def __enter__(self) -> TextEmbedder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
