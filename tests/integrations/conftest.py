"""A sample index shared by the integration tests (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.conftest import build_index


@pytest.fixture(scope="session")
def integration_index(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    return build_index(tmp_path_factory.mktemp("integrations") / "index", model_cache)
