"""Input files: find them, check them, turn them into page images.

Every problem with one input becomes an :class:`~ragged.errors.InputError`
subclass with a one-line message naming the file and what to do; callers
report it and go on with the other inputs.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from PIL import Image, ImageSequence

from ragged.errors import (
    CorruptDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageTooLargeError,
    InputError,
    UnsupportedFileError,
)
from ragged.ingest.convert import CONVERTIBLE_SUFFIXES, check_convertible, is_convertible

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
PDF_SUFFIXES = {".pdf"}
DOCUMENT_SUFFIXES = IMAGE_SUFFIXES | PDF_SUFFIXES | CONVERTIBLE_SUFFIXES  # what a folder walk picks up
# PDFium's FPDF_GetLastError codes.
_ERR_PASSWORD, _ERR_SECURITY = 4, 5
# A page tree that counts zero pages and no page object anywhere.
_ZERO_PAGES = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+0\b|/Count\s+0\b[^>]*?/Type\s*/Pages\b")
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?!s)\b")
PDFIUM_LOCK = threading.RLock()  # PDFium is not thread-safe: every call into it holds this
MAX_PAGE_PIXELS = 64_000_000  # ~ an A0 poster at 150 dpi; larger is treated as a decompression bomb


class DocumentKind(StrEnum):
    """What a file holds."""

    PDF = "pdf"
    IMAGE = "image"
    CONVERTED = "converted"  # Office, web or text: its pages are those of the PDF LibreOffice makes of it


@dataclass(frozen=True)
class InputProblem:
    """An input that could not be used, and why (one line naming the input)."""

    path: str
    message: str
    empty: bool = False  # a folder with nothing to ingest (not a problem when --prune emptied it)
    skipped: bool = False  # a file of a kind ragged does not read, found in a folder: named, not an error


@dataclass(frozen=True)
class Document:
    """A checked input file: its content hash, kind and page count (0 for a
    converted document until it is converted; then ``source`` is its PDF)."""

    path: Path
    sha256: str
    kind: DocumentKind
    pages: int
    source: Path | None = None

    @property
    def pdf(self) -> Path:
        """The PDF that holds the pages (an InputError for an image, or a document not yet converted)."""
        if self.kind is DocumentKind.PDF:
            return self.path
        if self.kind is DocumentKind.CONVERTED and self.source is not None:
            return self.source
        raise InputError(f"{self.path}: its pages are not in a PDF yet; ingest it again.")


@dataclass(frozen=True)
class RenderedPage:
    """One page as the model will see it, and its text layer ("": none)."""

    image: Image.Image
    text: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes the image holds (RGB)."""
        return self.image.width * self.image.height * 3


# fit(width, height) -> the largest (width, height) worth holding for the model
Fit = Callable[[int, int], tuple[int, int]]


def is_regular_file(path: Path) -> bool:
    """True for a regular file (or a link to one): never a pipe, device or socket."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[InputProblem]]:
    """Files to ingest: explicit files as given, folders searched recursively
    for documents (hidden files passed over; files of other kinds named as
    skipped), duplicates removed."""
    found: list[Path] = []
    problems: list[InputProblem] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            problems.append(InputProblem(str(raw), f"{raw}: no such file or folder; check the path."))
            continue
        if path.is_dir():
            before = len(problems)
            candidates = _walk(path, problems)
            if not candidates and not any(not p.skipped for p in problems[before:]):
                problems.append(InputProblem(str(raw), f"{raw}: no documents ragged reads in this folder; check "
                                                        "the path (hidden files and folders are skipped).",
                                             empty=True))
        elif not is_regular_file(path):
            problems.append(InputProblem(str(raw), f"{raw}: not a regular file (a pipe, device or socket); "
                                                    "give a file or a folder."))
            continue
        else:
            candidates = [path]
        for candidate in candidates:
            key = candidate.resolve()
            if key in seen:
                continue
            seen.add(key)
            if (bad_name := unstorable_name(candidate)) is not None:
                problems.append(bad_name)
            else:
                found.append(candidate)
    return found, problems


def unstorable_name(path: Path) -> InputProblem | None:
    """A problem for a path that is not valid UTF-8 (the index stores paths
    as text), shown with its odd bytes escaped; None for any other path."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system decoded as surrogate escapes
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        return InputProblem(shown, f"{shown}: the file name is not valid UTF-8, so the index cannot store it; "
                                   "rename the file.")
    return None


def _walk(folder: Path, problems: list[InputProblem]) -> list[Path]:
    """Documents under ``folder`` (hidden ones passed over, linked folders
    followed once), sorted; a folder that cannot be read, a link to nothing
    and a file of another kind are reported, not passed over in silence."""
    found: list[Path] = []
    visited: set[str] = set()

    def unreadable(exc: OSError) -> None:
        problems.append(InputProblem(str(exc.filename), f"{exc.filename}: cannot read this folder "
                                                        f"({exc.strerror}); check its permissions."))

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a link back up the tree: once is enough
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            candidate = Path(root) / name
            if name.startswith("."):
                continue
            if candidate.suffix.lower() not in DOCUMENT_SUFFIXES:
                problems.append(InputProblem(str(candidate), f"{candidate}: not a kind of file ragged reads; "
                                                             "skipped.", skipped=True))
                continue
            try:
                dangling = candidate.is_symlink() and not candidate.exists()
                target = os.readlink(candidate) if dangling else ""
            except OSError as exc:  # a link into a folder this user cannot read
                problems.append(InputProblem(str(candidate), f"{candidate}: cannot read it "
                                                             f"({exc.strerror or exc}); check its permissions."))
                continue
            if dangling:
                problems.append(InputProblem(str(candidate), f"{candidate}: a link to nothing "
                                                             f"({target}); fix or remove it."))
            elif is_regular_file(candidate):
                found.append(candidate)
    return sorted(found)


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect_kind(path: Path) -> DocumentKind:
    """Whether ``path`` holds a PDF, an image or a document to convert (an InputError otherwise)."""
    return _sniff(path)


def _sniff(path: Path) -> DocumentKind:
    try:
        with path.open("rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror}); check its permissions.") from exc
    if is_convertible(path) and not head.startswith(b"%PDF-"):
        check_convertible(path)
        return DocumentKind.CONVERTED
    if b"%PDF-" in head[:1024]:
        return DocumentKind.PDF
    if path.suffix.lower() in PDF_SUFFIXES:
        raise CorruptDocumentError(f"{path}: named .pdf but is not a PDF; re-export or re-download it.")
    try:
        with Image.open(path) as img:
            img_format = img.format
            _check_image_pixels(path, img.width, img.height)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{path}: image too large to decode safely; scale it down below {MAX_PAGE_PIXELS:,} pixels."
        ) from exc
    except ImageTooLargeError:
        raise
    except Exception as exc:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise CorruptDocumentError(f"{path}: not a readable image; re-export or re-download it.") from exc
        raise UnsupportedFileError(f"{path}: not a kind of file ragged reads (PDF, Office, HTML, Markdown, text "
                                   "or an image); skip it.") from exc
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
    if kind is DocumentKind.CONVERTED:
        pages = 0  # known once converted
    elif kind is DocumentKind.PDF:
        with PDFIUM_LOCK:
            pdf = _open_pdf(path)
            try:
                pages = len(pdf)  # type: ignore[arg-type]
            finally:
                pdf.close()  # type: ignore[attr-defined]
        if pages == 0:
            raise EmptyDocumentError(f"{path}: the PDF has no pages; nothing to ingest.")
    else:
        pages = _frame_count(path)
    return Document(path=path, sha256=file_sha256(path), kind=kind, pages=pages)


def _frame_count(path: Path) -> int:
    """Pages of an image file: every frame of a multi-page TIFF or GIF."""
    try:
        with Image.open(path) as img:
            return max(1, int(getattr(img, "n_frames", 1)))
    except Exception as exc:
        raise CorruptDocumentError(f"{path}: not a readable image; re-export or re-download it.") from exc


def _check_image_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PAGE_PIXELS:
        raise ImageTooLargeError(
            f"{path}: image of {width}x{height} pixels is too large to decode safely; "
            f"scale it down below {MAX_PAGE_PIXELS:,} pixels."
        )


def _check_render_pixels(path: Path, width: float, height: float, page: int) -> None:
    if width * height > MAX_PAGE_PIXELS:
        raise ImageTooLargeError(
            f"{path}: page {page} would be {int(width)}x{int(height)} pixels, too large to render safely; "
            "lower --dpi."
        )


def _fitted(width: int, height: int, fit: Fit | None) -> tuple[int, int]:
    if fit is None:
        return width, height
    w, h = fit(width, height)
    return min(width, w), min(height, h)


def render_pages(doc: Document, dpi: int, fit: Fit | None = None) -> Iterator[RenderedPage]:
    """The document's pages, one at a time: PDFs rendered at ``dpi`` but
    never larger than ``fit`` allows (what the model will see), images
    scaled down to it, every frame of a multi-page image."""
    if doc.kind is DocumentKind.IMAGE:
        yield from _image_pages(doc.path, fit)
        return
    with PDFIUM_LOCK:
        pdf = _open_pdf(doc.pdf)
        count = len(pdf)  # type: ignore[arg-type]
    try:
        for index in range(count):
            with PDFIUM_LOCK:  # held per page, never across a yield
                page = pdf[index]  # type: ignore[index]
                points_w, points_h = page.get_size()
                full_w, full_h = round(points_w * dpi / 72.0), round(points_h * dpi / 72.0)
                width, _ = _fitted(max(1, full_w), max(1, full_h), fit)
                scale = (dpi / 72.0) * (width / max(1, full_w))
                _check_render_pixels(doc.path, points_w * scale, points_h * scale, index + 1)
                try:
                    bitmap = page.render(scale=scale)
                    image = bitmap.to_pil().convert("RGB")
                    bitmap.close()  # freed here, under the lock, not by a finaliser on any thread
                    text = _page_text(page)
                except Exception as exc:
                    raise CorruptDocumentError(
                        f"{doc.path}: page {index + 1} cannot be rendered ({exc}); repair the PDF."
                    ) from exc
            yield RenderedPage(image, text)
    finally:
        with PDFIUM_LOCK:
            pdf.close()  # type: ignore[attr-defined]


def render_pdf_page(path: Path, page: int, width: int) -> Image.Image:
    """Page ``page`` (1-based) of a PDF, ``width`` pixels wide (for display)."""
    with PDFIUM_LOCK:
        pdf = _open_pdf(path)
        try:
            sheet = pdf[page - 1]  # type: ignore[index]
            points_w, _ = sheet.get_size()
            bitmap = sheet.render(scale=width / max(1.0, points_w))
            image: Image.Image = bitmap.to_pil().convert("RGB")
            bitmap.close()
            return image
        except Exception as exc:
            raise CorruptDocumentError(f"{path}: page {page} cannot be rendered ({exc}); repair the PDF.") from exc
        finally:
            pdf.close()  # type: ignore[attr-defined]


def _page_text(page: object) -> str:
    """The page's text layer ("" when it has none: a scan, a picture)."""
    textpage = page.get_textpage()  # type: ignore[attr-defined]
    try:
        return str(textpage.get_text_range()).replace("\r\n", "\n").replace("\r", "\n").strip()
    finally:
        textpage.close()


def page_texts(doc: Document) -> list[str]:
    """Every page's text layer, without rendering anything ("" for images)."""
    if doc.kind is DocumentKind.IMAGE:
        return [""] * doc.pages
    with PDFIUM_LOCK:
        pdf = _open_pdf(doc.pdf)
        try:
            return [_page_text(pdf[i]) for i in range(len(pdf))]  # type: ignore[arg-type, index]
        except Exception as exc:
            raise CorruptDocumentError(f"{doc.path}: its text cannot be read ({exc}); repair the PDF.") from exc
        finally:
            pdf.close()  # type: ignore[attr-defined]


def _image_pages(path: Path, fit: Fit | None) -> Iterator[RenderedPage]:
    try:
        with Image.open(path) as img:
            _check_image_pixels(path, img.width, img.height)  # before decoding: below Pillow's own bomb limit
            for frame in ImageSequence.Iterator(img):
                image = frame.convert("RGB")
                size = _fitted(image.width, image.height, fit)
                if size != (image.width, image.height):
                    image = image.resize(size, Image.Resampling.LANCZOS)
                yield RenderedPage(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{path}: image too large to decode safely; scale it down below {MAX_PAGE_PIXELS:,} pixels."
        ) from exc
    except ImageTooLargeError:
        raise
    except Exception as exc:  # truncated or damaged data
        raise CorruptDocumentError(f"{path}: the image is damaged or truncated ({exc}); re-export it.") from exc
