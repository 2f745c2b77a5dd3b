"""Office and web documents to PDF, by LibreOffice in headless mode.

Word, PowerPoint, Excel, OpenDocument and RTF files, and HTML and plain
text, are converted by ``soffice --convert-to pdf``; Markdown is first
turned into HTML with markdown-it-py. The resulting PDF then goes through
the same page path as any PDF.

Each LibreOffice process runs with its own throwaway profile folder (so
runs never share or touch the user's settings), in its own process group
(so a timeout kills it and every helper it started), with the network
shut off in three ways: linked images and other resources are blocked by
the profile (``BlockUntrustedRefererLinks``), and both LibreOffice's own
proxy setting and the proxy variables point at a closed local port. The
profile also turns macros off.

One process converts a batch of files (starting LibreOffice costs about a
second, converting a short file a fraction of one). A batch is killed when
no file has come out for ``timeout_s`` (the per-file timeout) or when the
process tree holds more memory than it was allowed; the files it had not
finished are then tried one by one, so each gets its own verdict.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragged.errors import ConverterMissingError, CorruptDocumentError, EncryptedDocumentError, InputError

# Converted by LibreOffice as they are.
OFFICE_SUFFIXES = {".docx", ".pptx", ".xlsx", ".odt", ".odp", ".ods", ".rtf", ".doc", ".ppt", ".xls"}
WEB_SUFFIXES = {".html", ".htm", ".txt"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
CONVERTIBLE_SUFFIXES = OFFICE_SUFFIXES | WEB_SUFFIXES | MARKDOWN_SUFFIXES
MAX_CONVERT_BYTES = 256 * 1024**2  # a larger input is refused before LibreOffice is started
INSTALL_HINT = ("install LibreOffice (Debian/Ubuntu: apt install libreoffice-core libreoffice-writer "
                "libreoffice-calc libreoffice-impress; macOS: brew install --cask libreoffice) or set "
                "RAGGED_SOFFICE to its soffice program")

_ZIP, _OLE, _RTF = b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"{\\rtf"
_ZIP_KINDS = {".docx", ".pptx", ".xlsx", ".odt", ".odp", ".ods"}  # OOXML and OpenDocument: zip archives
_OLE_KINDS = {".doc", ".ppt", ".xls"}  # the older binary formats: OLE compound files
_ENCRYPTED_OOXML = "EncryptedPackage".encode("utf-16-le")  # the stream name of a password-protected OOXML file
_DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, so nothing leaves

# The profile LibreOffice starts with: no macros, no linked resources, every protocol through a proxy that is
# not there.
_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="BlockUntrustedRefererLinks"
 oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution"
 oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel"
 oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Misc"><prop oor:name="FirstRun" oor:op="fuse"><value>false</value>
</prop></item>
<item oor:path="/org.openoffice.Inet/Settings"><prop oor:name="ooInetProxyType" oor:op="fuse"><value>2</value>
</prop></item>
<item oor:path="/org.openoffice.Inet/Settings"><prop oor:name="ooInetNoProxy" oor:op="fuse"><value></value></prop>
</item>
""" + "".join(
    f'<item oor:path="/org.openoffice.Inet/Settings"><prop oor:name="ooInet{kind}Proxy{field}" oor:op="fuse">'
    f"<value>{value}</value></prop></item>\n"
    for kind in ("HTTP", "HTTPS", "FTP") for field, value in (("Name", "127.0.0.1"), ("Port", "9"))
) + "</oor:items>\n"


def is_convertible(path: Path) -> bool:
    """True for a file ragged reads by converting it to PDF first."""
    return path.suffix.lower() in CONVERTIBLE_SUFFIXES


def find_soffice() -> str:
    """The LibreOffice program: ``$RAGGED_SOFFICE``, else ``soffice`` or
    ``libreoffice`` on the PATH, else the macOS application."""
    named = os.environ.get("RAGGED_SOFFICE")
    if named:
        if shutil.which(named):
            return named
        raise ConverterMissingError(f"RAGGED_SOFFICE={named} is not a program; {INSTALL_HINT}.")
    for name in ("soffice", "libreoffice"):
        found = shutil.which(name)
        if found:
            return found
    mac = Path("/Applications/LibreOffice.app/Contents/MacOS/soffice")
    if mac.is_file():
        return str(mac)
    raise ConverterMissingError(f"LibreOffice is not installed; {INSTALL_HINT}.")


def check_convertible(path: Path) -> None:
    """Refuse, before any conversion, a file that is too large, does not
    hold what its name says, or is plainly password-protected."""
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror}); check its permissions.") from exc
    if size > MAX_CONVERT_BYTES:
        raise InputError(f"{path}: {size / 1024**2:.0f} MiB, over the {MAX_CONVERT_BYTES // 1024**2} MiB ragged "
                         "converts; export it to PDF yourself and ingest that.")
    if suffix in _ZIP_KINDS and head.startswith(_OLE) and _holds(path, _ENCRYPTED_OOXML):
        raise EncryptedDocumentError(f"{path}: the document is password-protected; save an unlocked copy and "
                                     "ingest that.")
    expected = _ZIP if suffix in _ZIP_KINDS else _OLE if suffix in _OLE_KINDS else _RTF if suffix == ".rtf" else b""
    if expected and not head.startswith(expected):
        raise CorruptDocumentError(f"{path}: not a {suffix} document inside (damaged, or misnamed); "
                                   "re-save or re-download it.")


def _holds(path: Path, needle: bytes, limit: int = 1 << 20) -> bool:
    with path.open("rb") as fh:
        return needle in fh.read(limit)


def markdown_html(text: str, title: str) -> str:
    """A Markdown document as a standalone HTML page (CommonMark with tables; raw HTML kept, and as
    LibreOffice fetches nothing, a link in it stays a link)."""
    from html import escape

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(text)  # raw HTML kept, as CommonMark says
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(title)}</title></head>\n'
            f"<body>\n{body}</body></html>\n")


def import_filter(path: Path) -> str:
    """The import filter LibreOffice must be told to use ("": its own choice).
    HTML goes into Writer proper: its default, Writer/Web, drops a leading
    heading and adds an empty first page."""
    return "HTML (StarWriter)" if path.suffix.lower() in MARKDOWN_SUFFIXES | {".html", ".htm"} else ""


def prepare_profile(folder: Path) -> Path:
    """A fresh LibreOffice profile in ``folder`` with the network shut off."""
    user = folder / "user"
    user.mkdir(parents=True, exist_ok=True)
    (user / "registrymodifications.xcu").write_text(_PROFILE, encoding="utf-8")
    return folder


@dataclass(frozen=True)
class Limits:
    """What one LibreOffice process may take."""

    timeout_s: float  # without a file coming out
    memory_bytes: int | None  # its process tree's resident memory (None: not watched)


@dataclass
class BatchOutcome:
    """What came out of one LibreOffice run: a PDF per converted file, and
    why the run was stopped ("" when it ended by itself)."""

    pdfs: dict[Path, Path] = field(default_factory=dict)
    stopped: str = ""
    peak_rss_bytes: int = 0
    seconds: float = 0.0


def stage(files: Sequence[Path], folder: Path) -> list[Path]:
    """What LibreOffice is given for each file: the file itself, or for
    Markdown an HTML page written into ``folder`` under the same stem."""
    staged = []
    for path in files:
        if path.suffix.lower() in MARKDOWN_SUFFIXES:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise InputError(f"{path}: cannot read it ({exc.strerror}); check its permissions.") from exc
            target = folder / f"{path.stem}.html"
            target.write_text(markdown_html(text, path.stem), encoding="utf-8")
            staged.append(target)
        else:
            staged.append(path)
    return staged


def run_batch(soffice: str, files: Sequence[Path], profile: Path, out_dir: Path, limits: Limits) -> BatchOutcome:
    """Convert ``files`` (distinct stems, one import filter) in one LibreOffice process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / "staged"
    staging.mkdir(exist_ok=True)
    inputs = stage(files, staging)
    infilter = {import_filter(p) for p in files}
    if len(infilter) != 1:
        raise ValueError("one batch, one import filter")
    command = [soffice, f"-env:UserInstallation={profile.resolve().as_uri()}", "--headless", "--invisible",
               "--norestore", "--nologo", "--nodefault", "--nolockcheck",
               *([f"--infilter={next(iter(infilter))}"] if next(iter(infilter)) else []),
               "--convert-to", "pdf", "--outdir", str(out_dir), *(p.resolve().as_uri() for p in inputs)]
    env = {**os.environ, "http_proxy": _DEAD_PROXY, "https_proxy": _DEAD_PROXY, "ftp_proxy": _DEAD_PROXY,
           "HTTP_PROXY": _DEAD_PROXY, "HTTPS_PROXY": _DEAD_PROXY, "no_proxy": "", "NO_PROXY": "",
           "TMPDIR": str(out_dir), "SAL_USE_VCLPLUGIN": "svp"}
    outcome = BatchOutcome()
    started = time.monotonic()
    with (out_dir / "soffice.log").open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
        try:
            outcome.stopped, outcome.peak_rss_bytes = _watch(process, out_dir, limits)
        finally:
            _kill_group(process)
    outcome.seconds = time.monotonic() - started
    for path, given in zip(files, inputs, strict=True):
        pdf = out_dir / f"{given.stem}.pdf"
        if pdf.is_file() and pdf.stat().st_size > 0 and (not outcome.stopped or _complete(pdf)):
            outcome.pdfs[path] = pdf
    return outcome


def _watch(process: subprocess.Popen[bytes], out_dir: Path, limits: Limits) -> tuple[str, int]:
    """Wait for ``process``; ("", peak) when it ended by itself, else (why it was stopped, peak). A new
    PDF in ``out_dir`` is progress: the clock of the per-file timeout starts again."""
    import psutil

    last_change, done, peak = time.monotonic(), 0, 0
    while process.poll() is None:
        time.sleep(0.1)
        rss = _tree_rss(psutil, process.pid)
        peak = max(peak, rss)
        if limits.memory_bytes is not None and rss > limits.memory_bytes:
            return (f"it needed more than the {limits.memory_bytes / 1024**3:.1f} GiB the memory policy leaves "
                    "for converting one file"), peak
        now_done = sum(1 for _ in out_dir.glob("*.pdf"))
        if now_done != done:
            done, last_change = now_done, time.monotonic()
        elif time.monotonic() - last_change > limits.timeout_s:
            return f"it took longer than {limits.timeout_s:g} s to convert (--convert-timeout)", peak
    return "", peak


def _tree_rss(psutil: Any, pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (0 once gone)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except Exception:  # gone between the poll and now
        return 0
    total = 0
    for member in members:
        try:
            total += int(member.memory_info().rss)
        except Exception:
            continue
    return total


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """End LibreOffice and every process it started (its own process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
    process.wait()
    with suppress(ProcessLookupError, PermissionError):  # helpers left in the group after the leader exited
        os.killpg(process.pid, signal.SIGKILL)


def _complete(pdf: Path) -> bool:
    """True when a PDF from a stopped run was written to its end."""
    try:
        with pdf.open("rb") as fh:
            fh.seek(max(0, pdf.stat().st_size - 1024))
            return b"%%EOF" in fh.read()
    except OSError:
        return False
