"""``ragged-index.json``: what built the index, checked on every read.

Formats:
    1  paths as given on the command line (relative to where ingest ran)
    2  absolute paths; per-page patch grids and page text
    3  one copy of the vectors, in segment files; the catalog log is the
       commit point; LanceDB keeps text, passage vectors and metadata
A format newer than this ragged reads is refused with a clear error; an
older one is read as it is and upgraded by the next ingest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ragged.embeddings.names import is_storable
from ragged.errors import IndexStoreError
from ragged.index.files import atomic_write, refuse_link, storage_error
from ragged.text.model import DEFAULT_TEXT_MODEL

FORMAT = 3
META = "ragged-index.json"


@dataclass(frozen=True)
class IndexMeta:
    """What built the index: the vision model and its vector width, and the
    text model of the text side (None until text vectors are stored)."""

    model: str
    dim: int
    format: int = FORMAT
    text_model: str | None = None
    text_dim: int | None = None

    def upgraded(self) -> IndexMeta:
        """The same index at this ragged's format."""
        return replace(self, format=FORMAT)


def _damaged(path: Path, what: str) -> IndexStoreError:
    return IndexStoreError(
        f"{path} is damaged ({what}); restore it from a backup, or ingest into a new --index folder."
    )


def read_meta(folder: Path) -> IndexMeta | None:
    """The index's metadata, or None when there is no index in ``folder``."""
    path = folder / META
    if not path.exists() and not path.is_symlink():
        return None
    refuse_link(path)
    if not path.is_file():
        raise IndexStoreError(f"{path} is not a file; this folder is not a ragged index. Use another --index.")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise storage_error(exc, path) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object")
    try:
        fmt, model, dim = data["format"], data["model"], data["dim"]
    except KeyError as exc:
        raise _damaged(path, f"no {exc.args[0]!r} field") from exc
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise _damaged(path, f"format {fmt!r}")
    if fmt > FORMAT:
        raise IndexStoreError(
            f"The index at {folder} has format {fmt}, made by a newer ragged (this one reads up to {FORMAT}); "
            "upgrade ragged to use it."
        )
    if not is_storable(model):
        raise _damaged(path, f"model {model!r} is not a name ingest writes")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= 65536:
        raise _damaged(path, f"vector width {dim!r}")
    text_model, text_dim = data.get("text_model"), data.get("text_dim")
    text_ok = text_model == DEFAULT_TEXT_MODEL or (isinstance(text_model, str) and is_storable(text_model))
    if text_model is not None and (not text_ok or not isinstance(text_dim, int) or text_dim <= 0):
        raise _damaged(path, f"text model {text_model!r}")
    return IndexMeta(model=model, dim=dim, format=fmt, text_model=text_model, text_dim=text_dim)


def write_meta(folder: Path, meta: IndexMeta) -> None:
    """Write the metadata atomically."""
    data = json.dumps({k: v for k, v in asdict(meta).items() if v is not None}, indent=1).encode()
    atomic_write(folder / META, lambda fh: fh.write(data))
