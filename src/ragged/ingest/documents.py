"""Input files: find them, check them, turn them into page images.

Every problem with one input becomes an :class:`~ragged.errors.InputError`
subclass with a one-line message naming the file and what to do; callers
report it and go on with the other inputs.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from PIL import Image

from ragged.errors import (
    CorruptDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageTooLargeError,
    InputError,
    UnsupportedFileError,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
PDF_SUFFIXES = {".pdf"}
# PDFium's FPDF_GetLastError codes.
_ERR_PASSWORD, _ERR_SECURITY = 4, 5
# A page tree that counts zero pages and no page object anywhere.
_ZERO_PAGES = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+0\b|/Count\s+0\b[^>]*?/Type\s*/Pages\b")
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?!s)\b")
MAX_PAGE_PIXELS = 64_000_000  # ~ an A0 poster at 150 dpi; larger is treated as a decompression bomb


class DocumentKind(StrEnum):
    """What a file holds."""

    PDF = "pdf"
    IMAGE = "image"


@dataclass(frozen=True)
class InputProblem:
    """An input that could not be used, and why (one line naming the input)."""

    path: str
    message: str


@dataclass(frozen=True)
class Document:
    """A checked input file: its content hash, kind and page count."""

    path: Path
    sha256: str
    kind: DocumentKind
    pages: int


def discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[InputProblem]]:
    """Files to ingest: explicit files as given, folders searched recursively
    for PDFs and images (hidden files skipped), duplicates removed."""
    found: list[Path] = []
    problems: list[InputProblem] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            problems.append(InputProblem(str(raw), f"{raw}: no such file or folder; check the path."))
            continue
        if path.is_dir():
            candidates = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | PDF_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            candidates = [path]
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found, problems


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sniff(path: Path) -> DocumentKind:
    try:
        with path.open("rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror}); check its permissions.") from exc
    if b"%PDF-" in head[:1024]:
        return DocumentKind.PDF
    if path.suffix.lower() in PDF_SUFFIXES:
        raise CorruptDocumentError(f"{path}: named .pdf but is not a PDF; re-export or re-download it.")
    try:
        with Image.open(path) as img:
            img_format = img.format
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{path}: image too large to decode safely; scale it down below {MAX_PAGE_PIXELS:,} pixels."
        ) from exc
    except Exception as exc:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise CorruptDocumentError(f"{path}: not a readable image; re-export or re-download it.") from exc
        raise UnsupportedFileError(f"{path}: not a PDF or an image (PNG, JPEG, TIFF, ...); skip it.") from exc
    if img_format is None:
        raise UnsupportedFileError(f"{path}: unknown image format; convert it to PNG or PDF.")
    return DocumentKind.IMAGE


def _looks_empty(path: Path) -> bool:
    """True when a PDF's page tree is plainly empty. PDFium refuses such
    files without a specific error, so the bytes are checked directly."""
    try:
        with path.open("rb") as fh:
            data = fh.read(4 << 20)
    except OSError:
        return False
    return bool(_ZERO_PAGES.search(data)) and not _PAGE_OBJECT.search(data)


def _open_pdf(path: Path) -> object:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code in (_ERR_PASSWORD, _ERR_SECURITY) or "password" in str(exc).lower():
            raise EncryptedDocumentError(
                f"{path}: the PDF is password-protected; save an unlocked copy and ingest that."
            ) from exc
        if _looks_empty(path):  # PDFium refuses a document whose page tree is empty
            raise EmptyDocumentError(f"{path}: the PDF has no pages; nothing to ingest.") from exc
        raise CorruptDocumentError(
            f"{path}: the PDF is damaged or truncated ({exc}); repair or re-download it."
        ) from exc


def inspect(path: Path) -> Document:
    """Check one file and count its pages; raises an InputError subclass."""
    kind = _sniff(path)
    if kind is DocumentKind.PDF:
        pdf = _open_pdf(path)
        try:
            pages = len(pdf)  # type: ignore[arg-type]
        finally:
            pdf.close()  # type: ignore[attr-defined]
        if pages == 0:
            raise EmptyDocumentError(f"{path}: the PDF has no pages; nothing to ingest.")
    else:
        pages = 1
    return Document(path=path, sha256=file_sha256(path), kind=kind, pages=pages)


def _check_pixels(path: Path, width: float, height: float, page: int) -> None:
    if width * height > MAX_PAGE_PIXELS:
        raise ImageTooLargeError(
            f"{path}: page {page} would be {int(width)}x{int(height)} pixels, too large to render safely; "
            "lower --dpi."
        )


def render_pages(doc: Document, dpi: int) -> Iterator[Image.Image]:
    """The document's pages as RGB images, one at a time (PDFs at ``dpi``)."""
    if doc.kind is DocumentKind.IMAGE:
        yield _load_image(doc.path)
        return
    pdf = _open_pdf(doc.path)
    try:
        scale = dpi / 72.0
        for index in range(len(pdf)):  # type: ignore[arg-type]
            page = pdf[index]  # type: ignore[index]
            width, height = page.get_size()
            _check_pixels(doc.path, width * scale, height * scale, index + 1)
            try:
                bitmap = page.render(scale=scale)
                image = bitmap.to_pil().convert("RGB")
            except Exception as exc:
                raise CorruptDocumentError(
                    f"{doc.path}: page {index + 1} cannot be rendered ({exc}); repair the PDF."
                ) from exc
            yield image
    finally:
        pdf.close()  # type: ignore[attr-defined]


def _load_image(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(path, img.width, img.height, 1)
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{path}: image too large to decode safely; scale it down below {MAX_PAGE_PIXELS:,} pixels."
        ) from exc
    except ImageTooLargeError:
        raise
    except Exception as exc:  # truncated or damaged data
        raise CorruptDocumentError(f"{path}: the image is damaged or truncated ({exc}); re-export it.") from exc
