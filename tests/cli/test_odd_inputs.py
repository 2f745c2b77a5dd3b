"""Odd input that used to end in a traceback, a lost run, or the token sent
elsewhere (issue 18): a planted serve.json (item 5), invalid Unicode in a
query (item 8), a file name that is not UTF-8 (item 10), config values of
the wrong type (item 11), and a --ray-address that leads nowhere (item 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import Ragged
from tests.cli.test_bad_inputs import ingested, recipe
from tests.inputs import EXAMPLES

TOKEN = "tok-planted-record-7f3a"


class Listener:
    """An HTTP server on loopback that answers like ragged and remembers
    every request's headers (what a planted record would point at)."""

    def __init__(self, index: Path) -> None:
        self.seen: list[dict[str, str]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                listener.seen.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = json.dumps({"status": "ok", "index": str(index), "model": "tiny-colpali", "device": "cpu",
                                   "mode": "vision", "ms": 1.0, "pages_searched": 1, "notices": [],
                                   "query": "tart", "hits": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener(ragged: Ragged) -> Iterator[Listener]:
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    running = Listener(ragged.index)
    yield running
    running.close()


def _plant(index: Path, pid: int, url: str) -> None:
    (index / "serve.json").write_text(json.dumps({"pid": pid, "url": url, "token_required": True, "started": 0.0}))


# -- item 5 ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_planted_record_never_gets_the_token(ragged: Ragged, listener: Listener) -> None:
    """Item 5: a serve.json naming a live pid that is not the server (pid 1)
    and another server's URL: ragged searches in this process and sends
    that server nothing, least of all the token."""
    _plant(ragged.index, 1, listener.url)
    ragged.env["RAGGED_TOKEN"] = TOKEN
    result = ragged("search", "tart", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == "cpu"  # searched here, not "via" anything
    assert listener.seen == []


@pytest.mark.slow
def test_only_a_loopback_port_of_the_recorded_process_is_trusted(ragged: Ragged, listener: Listener) -> None:
    """Item 5: the record's pid must own the listening port; here it does
    (this test process runs the listener), so the search goes through it;
    the same record with a URL off loopback is refused before any request."""
    from ragged.serve.record import ServerRecord, untrusted

    _plant(ragged.index, os.getpid(), listener.url)
    ragged.env["RAGGED_TOKEN"] = TOKEN
    result = ragged("search", "tart", "--json")
    assert result.exit_code == 0, result.output
    assert "via " + listener.url in json.loads(result.stdout)["device"]
    assert listener.seen[0].get("authorization") is None  # /health: never the token
    assert listener.seen[-1]["authorization"] == f"Bearer {TOKEN}"  # the verified server's search
    port = listener.url.rsplit(":", 1)[1]
    for url, why in [(f"http://192.0.2.7:{port}", "loopback"), (f"https://127.0.0.1:{port}", "loopback"),
                     ("http://127.0.0.1:1", "does not listen on port 1"), ("garbage", "loopback")]:
        assert why in (untrusted(ServerRecord(os.getpid(), url, True, 0.0)) or ""), url
    assert "is gone" in (untrusted(ServerRecord(2**22 + 12345, listener.url, True, 0.0)) or "")


# -- item 8 ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_invalid_bytes_in_a_query_still_search(ragged: Ragged) -> None:
    """Item 8: a byte that is not UTF-8 in the argument reaches Python as a
    lone surrogate ("\\udcff"); in every mode it is searched as U+FFFD, with a note."""
    ingested(ragged, EXAMPLES / "recipe-card.pdf")
    for mode in ("vision", "text", "keyword", "hybrid"):
        result = ragged("search", "lemon tart\udcff", "--mode", mode, "--json")
        assert result.exit_code == 0, (mode, result.output)
        assert "not valid Unicode" in result.stderr and "Traceback" not in result.output
        assert json.loads(result.stdout)["query"] == "lemon tart\ufffd"


def test_a_query_of_invalid_bytes_only_is_one_line(ragged: Ragged) -> None:
    """Item 8: nothing left to search for: one line, exit 1 (before the index is opened)."""
    result = ragged("search", "\udcff\udcfe")
    assert result.exit_code == 1 and "not valid Unicode" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- item 10 -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_one_line_and_the_rest_commit(ragged: Ragged, tmp_path: Path) -> None:
    """Item 10: `bad\\xff\\xfename.pdf` beside a good file: one line for it,
    the good file committed, and a rerun works the same way."""
    folder = tmp_path / "docs"
    folder.mkdir()
    recipe(folder, "good.pdf")
    bad = os.fsdecode(os.fsencode(folder) + b"/bad\xff\xfename.pdf")
    Path(bad).write_bytes((EXAMPLES / "annual-report.pdf").read_bytes())
    for run, added in ((1, "1 document(s), 1 page(s) added"), (2, "0 document(s), 0 page(s) added")):
        result = ragged("ingest", str(folder), "--model", "tiny-colpali", "--dpi", "72")
        assert result.exit_code == 1, result.output  # one input failed
        assert "Traceback" not in result.output and added in result.output, (run, result.output)
        lines = [line for line in result.stderr.splitlines() if "bad\\xff\\xfename.pdf" in line]
        assert len(lines) == 1 and "not valid UTF-8" in lines[0] and "rename" in lines[0]
    listed = ragged("list", "--json")
    assert [Path(item["path"]).name for item in json.loads(listed.stdout)["items"]] == ["good.pdf"]


# -- item 11 -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "command", "says"), [
    ("index = 5", "search", "'index' must be a folder path"),
    ('index = ["a"]', "list", "'index' must be a folder path"),
    ("model = 7", "ingest", "'model' must be a model name"),
    ("dpi = 700", "ingest", "'dpi' must be a whole number from 36 to 600, not 700"),
    ('batch_size = "8"', "ingest", "'batch_size' must be a whole number of at least 1"),
    ("memory_target = true", "search", "'memory_target' must be a number from 0.2 to 1.0"),
    ('device = ""', "search", "'device' must be a device"),
])
def test_a_config_value_of_the_wrong_type_is_one_line(ragged: Ragged, tmp_path: Path, line: str, command: str,
                                                      says: str) -> None:
    """Item 11: one line naming the config file and the key (a bad dpi is
    the config file's, not RAGGED_DPI's), never a traceback."""
    config = tmp_path / "config.toml"
    config.write_text(line + "\n")
    ragged.env["RAGGED_CONFIG"] = str(config)
    ragged.env["RAGGED_INDEX"] = ""  # the config's index, where it has one, is the one used
    args = {"search": ["search", "tart"], "list": ["list"],
            "ingest": ["ingest", str(EXAMPLES / "recipe-card.pdf")]}[command]
    result = ragged(*args)
    assert result.exit_code == 1, result.output
    assert says in result.stderr and str(config) in result.stderr.replace("\n", "")
    assert "Traceback" not in result.output and "RAGGED_DPI" not in result.output


# -- item 12 -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("address", "says"), [("127.0.0.1:1", "Cannot reach the Ray cluster"),
                                               ("garbage::://", "is not an address")])
def test_a_ray_address_that_leads_nowhere_is_one_line_and_fast(tmp_path: Path, model_cache: Path, address: str,
                                                                says: str) -> None:
    """Item 12: no minute of Ray's own retry lines and no chained tracebacks:
    one line, within seconds, before any work."""
    pytest.importorskip("ray")
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1",
           "RAGGED_CONFIG": str(tmp_path / "none.toml")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ragged", "ingest", str(EXAMPLES / "recipe-card.pdf"), "--index",
                             str(tmp_path / "index"), "--model", "tiny-colpali", "--ray-address", address],
                            env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "gcs_client" not in result.stderr and "Traceback" not in result.stderr
    assert took < 45  # imports included; Ray alone retried for over a minute
    assert not (tmp_path / "index").exists()  # before any work
