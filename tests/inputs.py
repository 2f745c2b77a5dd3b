"""Bad and good input files for ingest tests, made on the fly."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image

from examples.make_examples import pdf_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def minimal_pdf(kids: str = "", count: int = 0) -> bytes:
    """A well-formed PDF whose page tree has ``count`` pages (0: an empty document)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
    ]
    return pdf_bytes(objects)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG file that claims a huge size (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b""
    )


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """One file per kind of bad input, plus one good PDF and one good image."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    good = (EXAMPLES / "recipe-card.pdf").read_bytes()
    files["good_pdf"] = folder / "good.pdf"
    files["good_pdf"].write_bytes(good)
    files["good_png"] = folder / "good.png"
    Image.new("RGB", (300, 400), "white").save(files["good_png"])
    files["not_a_document"] = folder / "notes.xyz"
    files["not_a_document"].write_text("just text")
    files["truncated_pdf"] = folder / "truncated.pdf"
    whole = (EXAMPLES / "annual-report.pdf").read_bytes()
    files["truncated_pdf"].write_bytes(whole[: len(whole) // 2])
    files["fake_pdf"] = folder / "fake.pdf"
    files["fake_pdf"].write_bytes(b"this is not a pdf")
    files["empty_pdf"] = folder / "empty.pdf"
    files["empty_pdf"].write_bytes(minimal_pdf())
    files["bomb_png"] = folder / "bomb.png"
    files["bomb_png"].write_bytes(bomb_png())
    files["truncated_png"] = folder / "truncated.png"
    data = (folder / "good.png").read_bytes()
    files["truncated_png"].write_bytes(data[: len(data) // 2])
    try:
        from pypdf import PdfWriter

        writer = PdfWriter(clone_from=EXAMPLES / "recipe-card.pdf")
        writer.encrypt("secret", algorithm="RC4-128")
        files["encrypted_pdf"] = folder / "encrypted.pdf"
        with files["encrypted_pdf"].open("wb") as fh:
            writer.write(fh)
    except ImportError:  # pypdf is a dev dependency
        pass
    return files


def blank_pdf(pages: int, width_pt: float, height_pt: float, text: str | None = None) -> bytes:
    """A valid PDF of ``pages`` blank pages of the given size in points (1/72 inch),
    each with one line of real text when ``text`` is given (a text layer)."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    font = None
    if text is not None:
        objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
        font = len(objects)
    for n in range(pages):
        resources = f"/Resources << /Font << /F1 {font} 0 R >> >>" if font else ""
        content = b""
        if text is not None:
            line = f"{text} {n + 1}".replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            content = f"BT /F1 24 Tf 72 {height_pt - 96} Td ({line}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        stream_id = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width_pt} {height_pt}] "
                       f"/Contents {stream_id} 0 R {resources} >>".encode())
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>".encode()
    return pdf_bytes(objects)
