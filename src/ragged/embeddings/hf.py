"""Keep transformers quiet: ragged reports progress itself."""

from __future__ import annotations


def quiet_transformers() -> None:
    """Turn off transformers' progress bars and info logging."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
