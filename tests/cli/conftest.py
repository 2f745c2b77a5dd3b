"""CLI fixtures: an isolated environment for every run of ``ragged``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ragged.cli.main import cli


class Ragged:
    """Runs ``ragged`` in-process with its own cache, config and index."""

    def __init__(self, model_cache: Path, home: Path) -> None:
        self.env = {
            "RAGGED_CACHE_DIR": str(model_cache),
            "RAGGED_CONFIG": str(home / "no-config.toml"),
            "RAGGED_INDEX": str(home / "index"),
            "RAGGED_MODEL": "",
            "RAGGED_DEVICE": "",
            "RAGGED_BATCH_SIZE": "",
            "RAGGED_DPI": "",
            "HF_HUB_OFFLINE": "1",
        }
        self.index = home / "index"

    def __call__(self, *args: str) -> Result:
        env = {k: v for k, v in self.env.items() if v}
        unset = {k: None for k, v in self.env.items() if not v}
        return CliRunner().invoke(cli, list(args), env={**unset, **env}, catch_exceptions=False)


@pytest.fixture
def ragged(model_cache: Path, tmp_path: Path) -> Ragged:
    from ragged.config import forget_config

    forget_config()
    return Ragged(model_cache, tmp_path)
