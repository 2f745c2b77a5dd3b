"""ragged: private, local retrieval over document pages seen as images."""

__version__ = "0.5.1"

__all__ = ["__version__"]
