"""The ``ragged`` command end to end, on the CPU with tiny presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ragged.gpu.batch_sizer import CPU_START_IDLE
from tests.cli.conftest import Ragged
from tests.inputs import EXAMPLES, make_bad_inputs


def one_line_errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_ingest_search_and_reingest(ragged: Ragged) -> None:
    first = ragged("ingest", str(EXAMPLES), "--model", "tiny-colpali")
    assert first.exit_code == 0, first.output
    assert "3 document(s), 6 page(s) added" in first.stdout
    for label in ("device", "batches", "memory", "out of memory", "speed"):
        assert label in first.stdout
    assert f"chosen {CPU_START_IDLE} (start)" in first.stdout  # what the sizer chose (cores read as free), and why

    again = ragged("ingest", str(EXAMPLES), "--json")  # model taken from the index
    report = json.loads(again.stdout)
    assert again.exit_code == 0
    assert (report["documents_added"], report["pages_added"], report["documents_skipped"]) == (0, 0, 3)

    found = ragged("search", "quarterly revenue", "-k", "4", "--json")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert len(hits) == 4
    assert all(Path(h["path"]).name in {p.name for p in EXAMPLES.glob("*.pdf")} for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    repeat = json.loads(ragged("search", "quarterly revenue", "-k", "4", "--json").stdout)["hits"]
    assert repeat == hits  # deterministic

    ragged.env["COLUMNS"] = "300"  # whole paths, one row per hit
    table = ragged("search", "quarterly revenue", "-k", "4")
    assert table.exit_code == 0
    rows = [line for line in table.stdout.splitlines() if ".pdf" in line]
    assert [next(part.strip() for part in row.split("│") if ".pdf" in part) for row in rows] == [
        h["path"] for h in hits
    ]  # the table shows the same pages, in the same order, as --json


def test_ingest_report_as_json(ragged: Ragged) -> None:
    result = ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--model", "tiny-colqwen2", "--json",
                    "--batch-size", "2", "--dpi", "72")
    report = json.loads(result.stdout)
    vision, text = report["vision"], report["text"]
    assert report["pages_added"] == 1 and report["device"] == "cpu" and vision["ooms"] == 0
    assert vision["peak_bytes"] > 0 and report["pages_per_second"] > 0 and max(vision["batch_sizes"]) <= 2
    assert vision["items"] == 1 and vision["model"] == "tiny-colqwen2" and vision["recoveries"]["reduce_batch"] == 0
    assert text["model"] == report["text_model"] == "all-MiniLM-L6-v2" and text["items"] >= 1  # passages


def test_bad_inputs_are_reported_and_the_rest_processed(ragged: Ragged, tmp_path: Path) -> None:
    files = make_bad_inputs(tmp_path / "inputs")
    bad = [p for k, p in files.items() if not k.startswith("good")]
    result = ragged("ingest", *map(str, files.values()), str(tmp_path / "missing.pdf"), "--model", "tiny-colpali",
                    "--json")
    assert result.exit_code == 1  # the good ones were stored, and the status tells a script some were not
    errors = one_line_errors(result.stderr)
    assert len(errors) == len(bad) + 1
    for path in [*bad, tmp_path / "missing.pdf"]:
        assert sum(str(path) in line for line in errors) == 1
    report = json.loads(result.stdout)
    assert report["documents_added"] == 2
    messages = {Path(e["path"]).name: e["error"] for e in report["errors"]}
    assert "password" in messages["encrypted.pdf"]
    assert "no pages" in messages["empty.pdf"]
    assert "too large" in messages["bomb.png"]
    assert "not a kind of file ragged reads" in messages["notes.xyz"]
    assert "damaged or truncated" in messages["truncated.pdf"]


def test_nothing_usable_fails(ragged: Ragged, tmp_path: Path) -> None:
    files = make_bad_inputs(tmp_path / "inputs")
    result = ragged("ingest", str(files["fake_pdf"]), str(tmp_path / "missing"), "--model", "tiny-colpali")
    assert result.exit_code == 1
    assert len(one_line_errors(result.stderr)) == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "no such model!"], 1, "Unknown model"),
        (["--device", "tpu"], 1, "Unknown device 'tpu'"),
        (["--device", "cuda:9"], 1, "not available"),
        (["--batch-size", "0"], 2, "Invalid value for '--batch-size'"),
        (["--batch-size", "-3"], 2, "Invalid value for '--batch-size'"),
    ],
)
def test_bad_options(ragged: Ragged, args: list[str], code: int, message: str) -> None:
    result = ragged("ingest", str(EXAMPLES), "--model", "tiny-colpali", *args)
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not ragged.index.exists()  # nothing was started


def test_cuda_without_cuda(ragged: Ragged) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    result = ragged("ingest", str(EXAMPLES), "--model", "tiny-colpali", "--device", "cuda")
    assert result.exit_code == 1 and "cuda is not available" in result.stderr and "available: cpu" in result.stderr


def test_unwritable_index(ragged: Ragged, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = ragged("ingest", str(EXAMPLES), "--model", "tiny-colpali", "--index", str(blocker / "index"))
    assert result.exit_code == 1 and "not writable" in result.stderr
    assert len(one_line_errors(result.stderr)) == 1


def test_index_of_another_model(ragged: Ragged) -> None:
    assert ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--model", "tiny-colpali").exit_code == 0
    result = ragged("ingest", str(EXAMPLES), "--model", "tiny-colqwen2")
    assert result.exit_code == 1 and "was built with 'tiny-colpali'" in result.stderr
    search = ragged("search", "tart", "--model", "tiny-colqwen2")
    assert search.exit_code == 1 and "was built with 'tiny-colpali'" in search.stderr


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query(ragged: Ragged, query: str) -> None:
    ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--model", "tiny-colpali")
    result = ragged("search", query)
    assert result.exit_code == 1 and "Empty query" in result.stderr


def test_search_without_index(ragged: Ragged) -> None:
    result = ragged("search", "anything")
    assert result.exit_code == 1 and "No index at" in result.stderr and "ragged ingest" in result.stderr


def test_settings_from_environment_and_config(ragged: Ragged, tmp_path: Path) -> None:
    config = tmp_path / "no-config.toml"
    config.write_text('model = "tiny-colqwen2"\ndpi = 72\n')
    result = ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["model"] == "tiny-colqwen2"
    ragged.env["RAGGED_INDEX"] = str(tmp_path / "other-index")
    ragged.env["RAGGED_MODEL"] = "tiny-colpali"
    result = ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--json")
    assert json.loads(result.stdout)["model"] == "tiny-colpali"
    assert (tmp_path / "other-index" / "ragged-index.json").is_file()
    config.write_text("colour = 'red'\n")
    from ragged.config import forget_config

    forget_config()
    bad = ragged("ingest", str(EXAMPLES))
    assert bad.exit_code == 1 and "unknown keys" in bad.stderr


def test_the_index_text_model_wins_over_the_config_file(ragged: Ragged, tmp_path: Path) -> None:
    """As for the vision model: an index built with a text model keeps it
    whatever the config file names (with the config winning, this run would
    fail on a model that is not there); a flag is the user's explicit choice
    and must load."""
    from ragged.config import forget_config

    first = ragged("ingest", str(EXAMPLES / "recipe-card.pdf"), "--model", "tiny-colpali", "--dpi", "72", "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["text_model"] == "all-MiniLM-L6-v2"
    config = tmp_path / "no-config.toml"
    config.write_text(f'text_model = "{tmp_path / "another-text-model"}"\n')
    forget_config()
    second = ragged("ingest", str(EXAMPLES / "annual-report.pdf"), "--dpi", "72", "--json")
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["text_model"] == "all-MiniLM-L6-v2"
    flag = ragged("ingest", str(EXAMPLES / "rental-contract.pdf"), "--text-model", str(tmp_path), "--dpi", "72")
    assert flag.exit_code == 1


def test_help_lists_environment_variables(ragged: Ragged) -> None:
    text = ragged("ingest", "--help").stdout
    for name in ("RAGGED_MODEL", "RAGGED_DEVICE", "RAGGED_BATCH_SIZE", "RAGGED_DPI", "RAGGED_INDEX"):
        assert name in text


def test_gpu_commands(ragged: Ragged) -> None:
    listing = ragged("gpu", "list", "--json")
    rows = json.loads(listing.stdout)
    assert listing.exit_code == 0 and any(r["device"] == "cpu" for r in rows)
    assert sum(r["auto"] for r in rows) == 1
    info = ragged("gpu", "info", "cpu")
    assert info.exit_code == 0 and "float32" in info.stdout
    crowded = json.loads(ragged("gpu", "stats", "--device", "cpu", "--warning", "1", "--critical", "2",
                                "--json").stdout)
    calm = json.loads(ragged("gpu", "stats", "--device", "cpu", "--warning", "99.8", "--critical", "99.9",
                             "--json").stdout)
    assert (crowded["level"], calm["level"]) == ("critical", "normal")
    assert 0 < crowded["used_bytes"] <= crowded["total_bytes"]
    assert ragged("gpu", "info", "tpu").exit_code == 1


def test_gpu_benchmark(ragged: Ragged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chart = tmp_path / "x.png"  # matplotlib comes with the README's [dev] install: the chart just works
    result = ragged("gpu", "benchmark", "--model", "tiny-colpali", "--pages", "3", "--max-batch", "2",
                    "--rounds", "2", "--json", "--plot", str(chart))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["rows"]
    assert [r["label"] for r in rows] == ["fixed 1", "fixed 2", "adaptive", "adaptive, new sizer"]
    for r in rows:  # one rate a round, warm-up excluded; the median of them
        assert len(r["rates"]) == 2 and all(x > 0 for x in r["rates"])
        assert r["slowest"] <= r["pages_per_second"] <= r["fastest"]
    adaptive = rows[2]
    assert [sum(s) for s in adaptive["sizes"]] == [3, 3] and sum(adaptive["warmup_sizes"]) == 3
    assert data["sizing"]["chosen"][0]["why"] == "start"
    # Two rounds cannot tell any two configurations apart: a sign test needs 5 to call one slower at 5%.
    assert data["level_with_best"] == {r["label"]: True for r in rows}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "chart written" in result.stderr
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without the extra, whatever is installed here
    missing = ragged("gpu", "benchmark", "--pages", "2", "--plot", str(tmp_path / "y.png"))
    assert missing.exit_code == 1 and "pip install matplotlib" in missing.stderr
    assert not (tmp_path / "y.png").exists()


def test_real_process_exit_status_and_no_traceback(tmp_path: Path, model_cache: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "RAGGED_CACHE_DIR": str(model_cache), "HOME": str(tmp_path),
           "RAGGED_INDEX": str(tmp_path / "index"), "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([sys.executable, "-m", "ragged", "ingest", str(tmp_path / "nope.pdf"), "--model",
                          "tiny-colpali"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert one_line_errors(bad.stderr) == [f"error: {tmp_path / 'nope.pdf'}: no such file or folder; check the path."]
