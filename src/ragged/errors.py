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
    ├── EmptyQueryError
    └── ServeError                  the search server and its clients (each with an HTTP status)
        ├── ClientError             a request the server will not answer as asked (400, 413, 429)
        ├── PageUnavailable         a page image that cannot be shown (404, 410)
        ├── ServiceUnavailable      the server cannot answer now (503)
        └── ServerError             'ragged search' could not use a server

The server answers each kind with its own status (:data:`HTTP_STATUS`):
a mistake in the request is the client's (4xx), a damaged index or a model
that cannot load is the server's (503), never one status for all.

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


class ServeError(RaggedError):
    """An error of the search server or of talking to it; ``status`` is its HTTP status."""

    status = 500

    def __init__(self, message: str, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers = headers  # extra response headers (e.g. Retry-After on 429)


class ClientError(ServeError):
    """A request the server will not answer as asked (400 by default; 413, 429)."""

    status = 400


class PageUnavailable(ServeError):
    """A page image that cannot be served: unknown (404), or its file is gone or changed (410)."""

    status = 404


class ServiceUnavailable(ServeError):
    """The service cannot answer now (503)."""

    status = 503


class ServerError(ServeError):
    """'ragged search' got an error from a server, or could not reach one."""

    status = 502


# The HTTP status of each kind of error the server may meet (the first matching class wins).
HTTP_STATUS: tuple[tuple[type[RaggedError], int], ...] = (
    (EmptyQueryError, 400),
    (ConfigurationError, 400),
    (InputError, 400),
    (ModelMismatchError, 409),
    (UnknownModelError, 503),
    (ModelError, 503),
    (OutOfMemoryRecoveryError, 503),
    (DeviceError, 503),
    (IndexStoreError, 503),
)


def http_status(error: RaggedError) -> int:
    """The HTTP status that answers ``error``."""
    if isinstance(error, ServeError):
        return error.status
    return next((status for kind, status in HTTP_STATUS if isinstance(error, kind)), 500)
