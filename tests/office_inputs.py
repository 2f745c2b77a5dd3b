"""Office, web and text files for ingest tests, made on the fly: each holds
a phrase of its own on its second page."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")
needs_soffice = pytest.mark.skipif(SOFFICE is None, reason="needs LibreOffice (apt install libreoffice-core "
                                                           "libreoffice-writer libreoffice-calc libreoffice-impress)")

# file name -> the phrase on its page 2 (words found in no other file)
PHRASES = {
    "report.docx": "lighthouse keeper counted seventeen herring gulls",
    "slides.pptx": "volcanic basalt columns beside the harbour",
    "budget.xlsx": "marmalade inventory for the northern warehouse",
    "minutes.odt": "orchestra rehearsal moved into the glasshouse",
    "ledger.ods": "copper kettle repairs invoiced twice",
    "letter.rtf": "tortoise escaped from the botanical garden",
    "legacy.doc": "saxophone lessons resume after the thaw",
    "page.html": "hot air balloon festival above the vineyard",
    "notes.md": "beekeeping journal mentions lavender honey",
    "plain.txt": "submarine cable splicing crew arrives on tuesday",
}
FIRST = "This first page is about nothing in particular: weather, trains and the price of bread."

_ODF_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
           'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
           'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
           'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
           'xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" office:version="1.2"')


def _odf(path: Path, mimetype: str, styles: str, body: str) -> None:
    """A minimal OpenDocument file: mimetype first and stored, a manifest, the content."""
    manifest = ('<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest xmlns:manifest="urn:oasis:names:tc:'
                'opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
                f'<manifest:file-entry manifest:full-path="/" manifest:media-type="{mimetype}"/>'
                '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
                '</manifest:manifest>')
    content = (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {_ODF_NS}>'
               f"<office:automatic-styles>{styles}</office:automatic-styles><office:body>{body}</office:body>"
               "</office:document-content>")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), mimetype, compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)


def write_docx(path: Path, second: str) -> None:
    import docx
    from docx.enum.text import WD_BREAK

    document = docx.Document()
    document.add_paragraph(FIRST)
    document.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
    document.add_paragraph(f"Page two: the {second}.")
    document.save(str(path))


def write_pptx(path: Path, second: str) -> None:
    from pptx import Presentation

    deck = Presentation()
    for title, body in (("Opening", FIRST), ("Findings", f"The {second}.")):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(str(path))


def write_xlsx(path: Path, second: str) -> None:
    from openpyxl import Workbook

    book = Workbook()
    first = book.active
    first.title = "Summary"
    first["A1"], first["A2"] = "weather", "rain"  # short cells: one page wide
    other = book.create_sheet("Detail")
    other["A1"] = f"The {second}."
    book.save(str(path))


def write_odt(path: Path, second: str) -> None:
    _odf(path, "application/vnd.oasis.opendocument.text",
         '<style:style style:name="P1" style:family="paragraph"><style:paragraph-properties '
         'fo:break-before="page"/></style:style>',
         f'<office:text><text:p>{FIRST}</text:p><text:p text:style-name="P1">The {second}.</text:p></office:text>')


def write_ods(path: Path, second: str) -> None:
    def sheet(name: str, text: str) -> str:
        return (f'<table:table table:name="{name}"><table:table-row><table:table-cell office:value-type="string">'
                f"<text:p>{text}</text:p></table:table-cell></table:table-row></table:table>")

    _odf(path, "application/vnd.oasis.opendocument.spreadsheet", "",
         f"<office:spreadsheet>{sheet('One', FIRST)}{sheet('Two', 'The ' + second + '.')}</office:spreadsheet>")


def write_rtf(path: Path, second: str) -> None:
    path.write_text("{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Helvetica;}}\\f0\\fs24 " + FIRST
                    + "\\par\\page The " + second + ".\\par}\n", encoding="ascii")


def write_html(path: Path, second: str) -> None:
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Page</title></head><body>"
                    f"<h1>A web page</h1><p>{FIRST}</p><p style='page-break-before: always'>The {second}.</p>"
                    "</body></html>", encoding="utf-8")


def write_md(path: Path, second: str) -> None:
    path.write_text(f"# Notes\n\n{FIRST}\n\n| day | weather |\n|---|---|\n| Monday | rain |\n\n"
                    f'<p style="page-break-before: always">The <b>{second}</b>.</p>\n', encoding="utf-8")


def write_txt(path: Path, second: str) -> None:
    path.write_text(f"{FIRST}\n\fThe {second}.\n", encoding="utf-8")  # a form feed starts a page


WRITERS = {".docx": write_docx, ".pptx": write_pptx, ".xlsx": write_xlsx, ".odt": write_odt, ".ods": write_ods,
           ".rtf": write_rtf, ".html": write_html, ".md": write_md, ".txt": write_txt}


def make_office_folder(folder: Path) -> dict[str, Path]:
    """Every file of :data:`PHRASES` in ``folder`` (the .doc made from a
    .docx by LibreOffice), plus a damaged .docx and a file of another kind."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, phrase in PHRASES.items():
        path = folder / name
        if path.suffix == ".doc":
            continue
        WRITERS[path.suffix](path, phrase)
        files[name] = path
    legacy = folder / "legacy.doc"
    work = folder.parent / "doc-work"
    work.mkdir(exist_ok=True)
    write_docx(work / "legacy.docx", PHRASES["legacy.doc"])
    assert SOFFICE is not None
    subprocess.run([SOFFICE, f"-env:UserInstallation={(work / 'profile').as_uri()}", "--headless", "--norestore",
                    "--convert-to", "doc", "--outdir", str(folder), str(work / "legacy.docx")],
                   check=True, capture_output=True, timeout=180)
    shutil.rmtree(work, ignore_errors=True)
    files["legacy.doc"] = legacy
    whole = files["report.docx"].read_bytes()
    files["damaged.docx"] = folder / "damaged.docx"
    files["damaged.docx"].write_bytes(whole[: len(whole) // 3])  # a zip cut short
    files["archive.xyz"] = folder / "archive.xyz"
    files["archive.xyz"].write_bytes(b"not a document ragged reads")
    return files
