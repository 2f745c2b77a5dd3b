"""Make the sample PDFs in this folder (run once; the PDFs are committed).

    python examples/make_examples.py

Three small documents with a real text layer (Helvetica, one of the PDF
standard fonts, so no font file is embedded), written by hand with the
standard library: deterministic output, no network, no dependency. Their
pages look like documents to the vision model and read as text to the text
model and to keyword search.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DOCS = {
    "annual-report.pdf": [
        ["Annual Report 2025", "", "Quarterly revenue", "Q1  4.2 M", "Q2  4.8 M", "Q3  5.1 M", "Q4  6.0 M",
         "", "Revenue grew 18% over the year."],
        ["Costs and margins", "", "Staff        2.1 M", "Hardware     0.9 M", "Cloud        0.4 M",
         "", "Operating margin rose to 21%."],
        ["Outlook", "", "We expect growth in the vision search market", "and a new office in Lyon."],
    ],
    "rental-contract.pdf": [
        ["Rental Contract", "", "Landlord: A. Martin", "Tenant: J. Okafor", "Monthly rent: 950 EUR",
         "Deposit: two months of rent"],
        ["Termination", "", "Either party may end this contract", "with three months notice in writing."],
    ],
    "recipe-card.pdf": [
        ["Lemon Tart", "", "Ingredients: flour, butter, sugar,", "eggs, lemons, cream.", "",
         "Bake the crust at 180 C for 15 minutes,", "fill, then bake 20 minutes more."],
    ],
}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def page_content(lines: list[str], height: float = 792) -> bytes:
    """Drawing operators for one letter page: a title, lines of text, a frame."""
    ops = ["0.5 G 40 40 532 712 re S", "0 g"]
    for n, line in enumerate(lines):
        if not line:
            continue
        size = 20 if n == 0 else 14
        ops.append(f"BT /F1 {size} Tf 60 {height - 80 - 28 * n:.0f} Td ({_escape(line)}) Tj ET")
    return "\n".join(ops).encode("latin-1")


def text_pdf(pages: list[list[str]]) -> bytes:
    """A PDF of letter pages with the given lines, as real text."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"",
                            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for lines in pages:
        content = page_content(lines)
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>".encode())
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    return pdf_bytes(objects)


def pdf_bytes(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (numbered from 1; the first is the catalog),
    with its cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def main() -> None:
    for name, pages in DOCS.items():
        (HERE / name).write_bytes(text_pdf(pages))
        print(f"wrote {name} ({len(pages)} pages)")


if __name__ == "__main__":
    main()
