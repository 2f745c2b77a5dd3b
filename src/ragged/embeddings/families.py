"""Model families: which classes load which checkpoint.

Native families come from transformers; more (ColQwen2.5, ColSmol/
ColIdefics3, ColQwen3, ...) come from colpali-engine, an optional extra that
only imports where a working torchvision is installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ragged.errors import ModelError


@dataclass(frozen=True)
class ModelFamily:
    """How to load one family: classes by dotted path, resolved lazily."""

    name: str
    model_class: str  # "module:Class"
    processor_class: str  # "module:Class"
    native: bool = True

    def _resolve(self, path: str) -> Any:
        module_name, _, attr = path.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            hint = "" if self.native else " Install the 'engine' extra (colpali-engine) with a working torchvision."
            raise ModelError(f"Model family {self.name} is not usable here: {exc}.{hint}") from exc

    def model_cls(self) -> Any:
        """The model class (imported on first use)."""
        return self._resolve(self.model_class)

    def processor_cls(self) -> Any:
        """The processor class (imported on first use)."""
        return self._resolve(self.processor_class)


_NATIVE = {
    "colpali": ModelFamily("colpali", "transformers:ColPaliForRetrieval", "transformers:ColPaliProcessor"),
    "colqwen2": ModelFamily("colqwen2", "transformers:ColQwen2ForRetrieval", "transformers:ColQwen2Processor"),
    "colmodernvbert": ModelFamily(
        "colmodernvbert", "transformers:ColModernVBertForRetrieval", "transformers:ColModernVBertProcessor"
    ),
}

# colpali-engine checkpoints name their architecture in config.json.
_ENGINE = {
    "ColQwen2_5": ModelFamily("colqwen2_5", "colpali_engine.models:ColQwen2_5",
                              "colpali_engine.models:ColQwen2_5_Processor", native=False),
    "ColIdefics3": ModelFamily("colidefics3", "colpali_engine.models:ColIdefics3",
                               "colpali_engine.models:ColIdefics3Processor", native=False),
    "ColQwen3": ModelFamily("colqwen3", "colpali_engine.models:ColQwen3",
                            "colpali_engine.models:ColQwen3Processor", native=False),
    "ColQwen2": ModelFamily("colqwen2-engine", "colpali_engine.models:ColQwen2",
                            "colpali_engine.models:ColQwen2Processor", native=False),
    "ColPali": ModelFamily("colpali-engine", "colpali_engine.models:ColPali",
                           "colpali_engine.models:ColPaliProcessor", native=False),
}


def family_for_config(config: dict[str, Any]) -> ModelFamily:
    """The family of a checkpoint, from its ``config.json`` contents."""
    model_type = str(config.get("model_type", ""))
    if model_type in _NATIVE:
        return _NATIVE[model_type]
    for arch in config.get("architectures") or []:
        if arch in _ENGINE:
            return _ENGINE[arch]
    raise ModelError(
        f"Unsupported model type {model_type or 'unknown'!r} "
        f"(architectures {config.get('architectures')}). Supported: ColPali, ColQwen2 and "
        "ColModernVBert checkpoints (transformers '-hf' formats), and with the 'engine' extra "
        + ", ".join(_ENGINE)
        + "."
    )
