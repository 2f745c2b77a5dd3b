"""Bad and hostile inputs, table-driven: each case is one row.

To add a case, append a :class:`Case` to ``CASES``: ``setup`` makes the
files it needs under a temporary folder and returns the command line;
the command must exit with ``code``, print each of ``says`` (on stdout or
stderr), never print a traceback, and never print any of ``never``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cli.conftest import Ragged
from tests.inputs import EXAMPLES, bomb_png

RAW_ESCAPE = "\x1b"


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path, Ragged], list[str]]
    code: int
    says: list[str] = field(default_factory=list)
    never: list[str] = field(default_factory=list)


def ingested(ragged: Ragged, *files: Path) -> None:
    result = ragged("ingest", *map(str, files), "--model", "tiny-colpali", "--dpi", "72")
    assert result.exit_code == 0, result.output


def recipe(tmp: Path, name: str) -> Path:
    target = tmp / name
    shutil.copy(EXAMPLES / "recipe-card.pdf", target)
    return target


def _markup_query(tmp: Path, ragged: Ragged) -> list[str]:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    return ["search", "[/oops] [bold]x"]


def _link_query(tmp: Path, ragged: Ragged) -> list[str]:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    return ["search", "[link=https://evil.example]click[/link]"]


def _markup_file_name(tmp: Path, ragged: Ragged) -> list[str]:
    (tmp / "[").mkdir()
    ingested(ragged, recipe(tmp, "[/]evil.pdf"))
    ragged.env["COLUMNS"] = "400"  # the whole path on one line
    return ["search", "tart"]


def _control_file_name(tmp: Path, ragged: Ragged) -> list[str]:
    ingested(ragged, recipe(tmp, "\x1b[2J\x1b]0;owned\x07clear.pdf"))
    ragged.env["COLUMNS"] = "400"
    return ["search", "tart"]


def _control_in_error(tmp: Path, ragged: Ragged) -> list[str]:
    bad = tmp / "\x1b[31mred.pdf"
    bad.write_bytes(b"not a pdf")
    return ["ingest", str(bad), "--model", "tiny-colpali"]


def _named_pipe(tmp: Path, ragged: Ragged) -> list[str]:
    os.mkfifo(tmp / "pipe.pdf")
    return ["ingest", str(tmp / "pipe.pdf"), "--model", "tiny-colpali"]


def _index_is_a_file(tmp: Path, ragged: Ragged) -> list[str]:
    (tmp / "index-file").write_text("x")
    return ["ingest", str(EXAMPLES / "recipe-card.pdf"), "--model", "tiny-colpali", "--index", str(tmp / "index-file")]


def _image_bomb(tmp: Path, ragged: Ragged) -> list[str]:
    (tmp / "bomb.png").write_bytes(bomb_png())
    return ["ingest", str(tmp / "bomb.png"), "--model", "tiny-colpali"]


def _huge_query(tmp: Path, ragged: Ragged) -> list[str]:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    return ["search", "revenue " * 12_500]  # 100,000 characters


def _index_model_path(tmp: Path, ragged: Ragged) -> list[str]:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    meta = ragged.index / "ragged-index.json"
    meta.write_text(meta.read_text().replace('"tiny-colpali"', '"../../etc"'))
    return ["search", "tart"]


def _dangling_link_in_folder(tmp: Path, ragged: Ragged) -> list[str]:
    folder = tmp / "docs"
    folder.mkdir()
    recipe(folder, "good.pdf")
    (folder / "gone.pdf").symlink_to(tmp / "nowhere.pdf")
    return ["ingest", str(folder), "--model", "tiny-colpali", "--dpi", "72"]


def _bad_server_url(tmp: Path, ragged: Ragged) -> list[str]:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    return ["search", "tart", "--server", "notaurl"]


def _not_a_ragged_server(tmp: Path, ragged: Ragged) -> list[str]:
    """Something answers JSON at that address, but not ragged's."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps({"hits": "not a list"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.handle_request, daemon=True).start()  # one request, then it stops
    return ["search", "tart", "--server", f"http://127.0.0.1:{server.server_port}"]


def _config_not_utf8(tmp: Path, ragged: Ragged) -> list[str]:
    config = tmp / "config.toml"
    config.write_bytes(b'model = "tiny-colpali"\n# caf\xe9 in Latin-1\n')
    ragged.env["RAGGED_CONFIG"] = str(config)
    return ["ingest", str(recipe(tmp, "a.pdf"))]


CASES = [
    Case("markup in a query", _markup_query, 0, says=["[/oops] [bold]x"]),
    Case("a link tag in a query", _link_query, 0, says=["[link=https://evil.example]click[/link]"],
         never=["\x1b]8;"]),
    Case("markup in a stored file name", _markup_file_name, 0, says=["[/]evil.pdf"]),
    Case("terminal controls in a file name", _control_file_name, 0, says=["\\x1b[2J\\x1b]0;owned\\x07clear.pdf"],
         never=[RAW_ESCAPE, "\x07"]),
    Case("terminal controls in an error line", _control_in_error, 1, says=["\\x1b[31mred.pdf"], never=[RAW_ESCAPE]),
    Case("a named pipe", _named_pipe, 1, says=["not a regular file"]),
    Case("an index path that is a file", _index_is_a_file, 1, says=["is a file, not a folder"],
         never=["File exists"]),
    Case("an image too large", _image_bomb, 1, says=["too large to decode safely"], never=["--dpi"]),
    Case("a 100,000-character query", _huge_query, 0, says=["cut to its first 512 tokens"]),
    Case("--index naming a file", lambda tmp, ragged: ["search", "tart", "--index", str(recipe(tmp, "a.pdf"))], 1,
         says=["a.pdf is a file, not an index folder"]),
    Case("a 100,000-character query, hybrid", lambda tmp, ragged: [*_huge_query(tmp, ragged), "--mode", "hybrid"], 0,
         says=["cut to its first 512 tokens (it had", "tokens for the text model (it had 12,500)"]),
    Case("an index naming a model path it never wrote", _index_model_path, 1,
         says=["model '../../etc' is not a name ingest writes"]),
    Case("a link to nothing in a folder", _dangling_link_in_folder, 1, says=["gone.pdf: a link to nothing",
                                                                            "1 document(s), 1 page(s) added"]),
    Case("--server that is not a URL", _bad_server_url, 1, says=["is not a server address"]),
    Case("--server that urlsplit refuses", lambda tmp, ragged: ["search", "tart", "--server", "http://[::1:8000"], 1,
         says=["'http://[::1:8000' is not a server address"]),
    Case("a config file that is not UTF-8", _config_not_utf8, 1, says=["is not UTF-8 text", "fix or remove it"],
         never=["added"]),
    Case("--server that is not ragged", _not_a_ragged_server, 1, says=["did not answer as 'ragged serve' does"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, ragged: Ragged, tmp_path: Path) -> None:
    args = case.setup(tmp_path, ragged)
    started = time.monotonic()
    result = ragged(*args)
    output = result.stdout + result.stderr
    assert result.exit_code == case.code, output
    assert "Traceback" not in output
    for text in case.says:
        assert text in output, f"{text!r} missing from:\n{output}"
    for text in case.never:
        assert text not in output
    assert time.monotonic() - started < 60  # bounded: nothing hangs or runs away


def test_a_link_into_an_unreadable_folder_is_reported(ragged: Ragged, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the test cannot lose a permission, so the refusal the OS gives
    another user (EACCES from stat through the link) is raised where it would be."""
    folder = tmp_path / "docs"
    folder.mkdir()
    recipe(folder, "good.pdf")
    (folder / "private.pdf").symlink_to(tmp_path / "locked" / "a.pdf")
    real_exists = Path.exists

    def exists(self: Path, **kwargs: bool) -> bool:
        if self.name == "private.pdf":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    result = ragged("ingest", str(folder), "--model", "tiny-colpali", "--dpi", "72")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "private.pdf: cannot read it (Permission denied)" in result.output
    assert "1 document(s), 1 page(s) added" in result.output


def test_tilde_is_expanded_once(ragged: Ragged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    ragged.env["HOME"] = str(home)
    result = ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--model", "tiny-colpali", "--index=~/idx")
    assert result.exit_code == 0, result.output
    ragged.env["RAGGED_INDEX"] = "~/idx"
    assert ragged("search", "tart").exit_code == 0
    assert (home / "idx" / "ragged-index.json").is_file() and not (tmp_path / "~").exists()


@pytest.mark.parametrize(("command", "message"), [("search", "interrupted."),
                                                  ("ingest", "every document committed so far is kept")])
def test_ctrl_c_says_what_it_kept(ragged: Ragged, monkeypatch: pytest.MonkeyPatch, command: str,
                                  message: str) -> None:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ragged.query.searcher.search", interrupted)
    monkeypatch.setattr("ragged.ingest.pipeline.ingest", interrupted)
    args = ["search", "x"] if command == "search" else ["ingest", str(EXAMPLES / "annual-report.pdf")]
    result = ragged(*args)
    assert result.exit_code == 130 and message in result.stderr
    if command == "search":
        assert "committed" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_while_starting_is_quiet(tmp_path: Path, delay: float) -> None:
    ragged = Path(sys.executable).parent / "ragged"
    proc = subprocess.Popen([str(ragged), "search", "x", "--index", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert proc.returncode in (130, 1)  # interrupted, or it finished first ("No index at ...")
