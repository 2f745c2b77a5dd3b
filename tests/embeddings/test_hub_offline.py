"""A hub model that is not downloaded, with the hub out of reach, is refused
at once (the hub client alone retries for about 25 s before giving up)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ragged.embeddings.loading import resolve_model
from ragged.errors import ModelError
from tests.serve.conftest import free_port


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode, with the hub at a loopback port where nothing listens."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def test_an_unreachable_hub_is_decided_in_under_a_second(unreachable_hub: None, tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"not in the cache .* cannot be reached"):
        resolve_model("vidore/colpali-v1.3-hf", tmp_path)
    assert time.perf_counter() - started < 1.0


def test_a_model_in_the_cache_needs_no_network(unreachable_hub: None, tmp_path: Path) -> None:
    folder = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"  # the hub cache's own layout
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "colpali"}')
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc")
    started = time.perf_counter()
    source = resolve_model("org/tiny", tmp_path)
    assert source.config["model_type"] == "colpali" and not source.is_local and source.location == "org/tiny"
    assert time.perf_counter() - started < 1.0
