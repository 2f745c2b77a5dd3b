"""Converting Office, web and text files, without LibreOffice: a stand-in
``soffice`` (RAGGED_SOFFICE) that converts, hangs or grows on cue, a
missing one, and the checks made before anything is converted."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from ragged.errors import CorruptDocumentError, EncryptedDocumentError, InputError
from ragged.gpu.runtime import Runtime
from ragged.ingest.conversion import _batches, cached_pdf, convert_documents
from ragged.ingest.convert import Limits, markdown_html, prepare_profile, run_batch
from ragged.ingest.documents import DocumentKind, discover, inspect
from tests.cli.conftest import Ragged
from tests.inputs import EXAMPLES, blank_pdf

# A stand-in for soffice: writes a one-page PDF per input named in argv, except that an input whose
# name holds "hang" makes it wait (with a child process, as LibreOffice has) and one holding "grow"
# makes it take memory first.
FAKE = """#!{python}
import os, subprocess, sys, time
from urllib.parse import unquote, urlparse
args = sys.argv[1:]
out = args[args.index("--outdir") + 1]
child = subprocess.Popen(["sleep", "300"])
open(os.environ["FAKE_PIDS"], "a").write(f"{{child.pid}}\\n")
for uri in [a for a in args if a.startswith("file://")]:
    name = os.path.basename(unquote(urlparse(uri).path))
    if "hang" in name:
        time.sleep(300)
    if "grow" in name:
        hog = b"x" * (200 * 2**20)
        time.sleep(300)
    with open(os.path.join(out, name.rsplit(".", 1)[0] + ".pdf"), "wb") as fh:
        fh.write(open(os.environ["FAKE_PDF"], "rb").read())
child.kill()
"""


@pytest.fixture
def fake_soffice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "soffice"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    pdf = tmp_path / "one-page.pdf"
    pdf.write_bytes(blank_pdf(1, 300, 400, text="converted"))
    monkeypatch.setenv("RAGGED_SOFFICE", str(script))
    monkeypatch.setenv("FAKE_PDF", str(pdf))
    monkeypatch.setenv("FAKE_PIDS", str(tmp_path / "pids"))
    return script


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def docx(path: Path) -> Path:
    import docx as python_docx

    document = python_docx.Document()
    document.add_paragraph(f"text of {path.stem}")
    document.save(str(path))
    return path


def test_a_file_that_hangs_is_stopped_with_every_process_it_started(fake_soffice: Path, tmp_path: Path) -> None:
    hang = docx(tmp_path / "hang.docx")
    started = time.monotonic()
    outcome = run_batch(str(fake_soffice), [hang], prepare_profile(tmp_path / "profile"), tmp_path / "out",
                        Limits(timeout_s=1.0, memory_bytes=None))
    assert time.monotonic() - started < 10
    assert "longer than 1 s" in outcome.stopped and not outcome.pdfs
    children = [int(p) for p in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 5  # SIGKILL is sent; a loaded machine may take a moment to carry it out
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children and not any(alive(p) for p in children)  # the helper went with its parent (it sleeps 300 s)


def test_a_converter_past_its_memory_share_is_stopped(fake_soffice: Path, tmp_path: Path) -> None:
    grow = docx(tmp_path / "grow.docx")
    outcome = run_batch(str(fake_soffice), [grow], prepare_profile(tmp_path / "profile"), tmp_path / "out",
                        Limits(timeout_s=60, memory_bytes=100 * 2**20))
    assert "memory policy" in outcome.stopped and not outcome.pdfs
    assert outcome.peak_rss_bytes > 100 * 2**20


def test_a_stopped_batch_gives_each_file_its_own_verdict(fake_soffice: Path, tmp_path: Path) -> None:
    names = ["alpha.docx", "hang.docx", "omega.docx"]
    docs = [inspect(docx(tmp_path / n)) for n in names]
    index = tmp_path / "index"
    result = convert_documents(docs, index, Runtime(), timeout_s=3.0)  # room for a slow start on a busy machine
    assert [d.path.name for d in result.ready] == ["alpha.docx", "omega.docx"]
    assert all(d.pages == 1 and d.source == cached_pdf(index, d.sha256) for d in result.ready)
    assert [Path(p.path).name for p in result.problems] == ["hang.docx"]
    assert "longer than 3 s" in result.problems[0].message and "\n" not in result.problems[0].message
    assert result.converted == 2 and result.pages == 2
    again = convert_documents(docs[:1], index, Runtime(), timeout_s=3.0)  # kept: not converted again
    assert again.converted == 0 and again.ready[0].source == result.ready[0].source


def test_batches_keep_names_apart_and_html_on_its_own() -> None:
    from ragged.ingest.documents import Document

    def doc(name: str) -> Document:
        return Document(Path("/x") / name, name, DocumentKind.CONVERTED, 0)

    batches = _batches([doc("a.docx"), doc("a.txt"), doc("b.html"), doc("c.md"), doc("d.pptx")])
    assert [[d.path.name for d in b] for b in batches] == [["a.docx", "d.pptx"], ["a.txt"], ["b.html", "c.md"]]


@pytest.mark.slow
def test_missing_libreoffice_is_one_line_and_the_rest_commit(tmp_path: Path, model_cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from ragged.config import forget_config

    forget_config()
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "recipe.pdf").write_bytes((EXAMPLES / "recipe-card.pdf").read_bytes())
    docx(folder / "memo.docx")
    (folder / "todo.txt").write_text("buy milk")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no soffice anywhere
    monkeypatch.delenv("RAGGED_SOFFICE", raising=False)
    ragged = Ragged(model_cache, tmp_path)
    result = ragged("ingest", str(folder), "--model", "tiny-colpali", "--text-model", "none", "--json")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "LibreOffice is not installed" in errors[0] and "apt install" in errors[0]
    report = json.loads(result.stdout)
    assert report["documents_added"] == 1  # the PDF
    assert sorted(Path(s["path"]).name for s in report["skipped"]) == ["memo.docx", "todo.txt"]


@pytest.mark.slow
def test_skipped_files_are_named(tmp_path: Path, model_cache: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "recipe.pdf").write_bytes((EXAMPLES / "recipe-card.pdf").read_bytes())
    (folder / "song.mp3").write_bytes(b"ID3")
    (folder / ".hidden.xyz").write_bytes(b"")
    ragged = Ragged(model_cache, tmp_path)
    plain = ragged("ingest", str(folder), "--model", "tiny-colpali", "--text-model", "none")
    assert plain.exit_code == 0 and "1 other file(s) skipped" in plain.stdout and "song.mp3" not in plain.stdout
    verbose = ragged("--verbose", "ingest", str(folder), "--text-model", "none")
    assert "song.mp3: not a kind of file ragged reads" in verbose.stdout
    only_other = tmp_path / "other"
    only_other.mkdir()
    (only_other / "song.mp3").write_bytes(b"ID3")
    files, problems = discover([only_other])
    assert not files and [p.skipped for p in problems] == [True, False]
    assert "no documents ragged reads" in problems[1].message


def test_checks_before_converting(tmp_path: Path) -> None:
    huge = tmp_path / "huge.docx"
    with huge.open("wb") as fh:  # sparse: no disk used
        fh.write(b"PK\x03\x04")
        fh.truncate(300 * 2**20)
    with pytest.raises(InputError, match="over the 256 MiB"):
        inspect(huge)
    misnamed = tmp_path / "misnamed.xlsx"
    misnamed.write_text("just text")
    with pytest.raises(CorruptDocumentError, match=r"not a \.xlsx document inside"):
        inspect(misnamed)
    locked = tmp_path / "locked.docx"  # how a password-protected OOXML file begins: an OLE file, one stream
    locked.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512) + "EncryptedPackage".encode("utf-16-le"))
    with pytest.raises(EncryptedDocumentError, match="password-protected"):
        inspect(locked)
    pdf_named_txt = tmp_path / "scan.txt"
    pdf_named_txt.write_bytes((EXAMPLES / "recipe-card.pdf").read_bytes())
    assert inspect(pdf_named_txt).kind is DocumentKind.PDF  # what it holds wins over its name
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    doc = inspect(text)
    assert doc.kind is DocumentKind.CONVERTED and doc.pages == 0
    with pytest.raises(InputError, match="not in a PDF yet"):
        _ = doc.pdf


def test_markdown_becomes_a_page_of_html() -> None:
    html = markdown_html("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n<b>raw</b>\n", "notes")
    assert "<h1>Title</h1>" in html and "<table>" in html and "<b>raw</b>" in html
    assert '<meta charset="utf-8">' in html and "<title>notes</title>" in html


def test_profile_shuts_the_network_off(tmp_path: Path) -> None:
    profile = prepare_profile(tmp_path / "p")
    settings = (profile / "user" / "registrymodifications.xcu").read_text()
    assert "BlockUntrustedRefererLinks" in settings and "<value>true</value>" in settings
    assert settings.count("<value>127.0.0.1</value>") == 3 and "ooInetProxyType" in settings
    assert os.path.getsize(profile / "user" / "registrymodifications.xcu") > 0


@pytest.mark.slow
def test_converted_documents_are_ingested_and_removed_with_their_pdf(fake_soffice: Path, tmp_path: Path,
                                                                     model_cache: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    docx(folder / "memo.docx")
    ragged = Ragged(model_cache, tmp_path)
    added = ragged("ingest", str(folder), "--model", "tiny-colpali", "--text-model", "none", "--json")
    assert added.exit_code == 0, added.output
    report = json.loads(added.stdout)
    assert report["documents_added"] == 1 and report["converted"]["documents"] == 1
    from ragged.index.store import IndexStore

    (record,) = IndexStore.open(ragged.index).documents()
    assert record.path == str((folder / "memo.docx").resolve())  # the original is what is stored
    assert cached_pdf(ragged.index, record.doc_hash).is_file()
    removed = ragged("remove", str(folder / "memo.docx"))
    assert removed.exit_code == 0 and not cached_pdf(ragged.index, record.doc_hash).exists()
