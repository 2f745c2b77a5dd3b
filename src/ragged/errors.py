"""The one exception tree of ragged.

Every error that ragged raises on purpose derives from :class:`RaggedError`
and carries a message that says what went wrong and what to do next::

    RaggedError
    ├── ConfigurationError          bad settings (batch size, thresholds, ...)
    ├── DeviceError
    │   └── DeviceUnavailableError  an explicit device hint cannot be met
    ├── OutOfMemoryRecoveryError    every enabled OOM strategy failed
    ├── ModelError
    │   ├── UnknownModelError       not a preset, folder or loadable hub id
    │   ├── ModelMismatchError      index built by another model
    │   └── ModelDoesNotFitError    the memory policy admits the model nowhere allowed
    ├── InputError                  one input file could not be used
    │   ├── UnsupportedFileError
    │   ├── CorruptDocumentError
    │   ├── EncryptedDocumentError
    │   ├── EmptyDocumentError
    │   ├── ImageTooLargeError
    │   └── ConverterMissingError  LibreOffice is needed for Office, web and text files
    ├── IndexStoreError             the index cannot be opened or written
    └── EmptyQueryError

Torch and driver errors are translated at one boundary with
``raise ... from exc``; user mistakes never surface as raw tracebacks.
"""

from __future__ import annotations


class RaggedError(Exception):
    """Base of every error ragged raises on purpose."""


class ConfigurationError(RaggedError, ValueError):
    """A setting is out of range or inconsistent."""


class DeviceError(RaggedError):
    """A device could not be queried or used."""


class DeviceUnavailableError(DeviceError):
    """An explicitly requested device does not exist on this machine."""


class OutOfMemoryRecoveryError(RaggedError):
    """Out of memory, and every enabled recovery strategy failed too."""


class ModelError(RaggedError):
    """A model could not be resolved or loaded."""


class UnknownModelError(ModelError):
    """The model name is neither a preset, a local folder nor a hub id."""


class ModelMismatchError(ModelError):
    """The index was built by a different model than the one requested."""


class ModelDoesNotFitError(ModelError):
    """The model (with room for one item of work) does not fit where it may go."""


class InputError(RaggedError):
    """One input could not be used; the others are still processed."""


class UnsupportedFileError(InputError):
    """The file is neither a PDF nor a supported image."""


class CorruptDocumentError(InputError):
    """The file claims a known type but cannot be decoded."""


class EncryptedDocumentError(InputError):
    """The PDF is password protected."""


class EmptyDocumentError(InputError):
    """The PDF has no pages."""


class ImageTooLargeError(InputError):
    """The image exceeds the safe decoding limit (decompression bomb)."""


class ConverterMissingError(InputError):
    """LibreOffice, which converts Office, web and text files, is not installed."""


class IndexStoreError(RaggedError):
    """The index folder cannot be opened, read or written."""


class EmptyQueryError(RaggedError, ValueError):
    """The search query is empty."""
