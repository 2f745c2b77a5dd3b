"""Each kind of error gets its own HTTP status: the request's fault is 4xx,
the server's 503, never one status for every error."""

from __future__ import annotations

import pytest

from ragged import errors
from ragged.errors import http_status


@pytest.mark.parametrize(("error", "status"), [
    (errors.ClientError("bad"), 400),
    (errors.ClientError("too big", 413), 413),
    (errors.ClientError("busy", 429), 429),
    (errors.PageUnavailable("moved", 410), 410),
    (errors.PageUnavailable("no such page"), 404),
    (errors.ServiceUnavailable("starting"), 503),
    (errors.EmptyQueryError("empty"), 400),
    (errors.ConfigurationError("unknown mode"), 400),
    (errors.ModelMismatchError("another model"), 409),
    (errors.IndexStoreError("damaged"), 503),
    (errors.OutOfMemoryRecoveryError("out of memory"), 503),
    (errors.ModelError("cannot load"), 503),
    (errors.RaggedError("anything else"), 500),
])
def test_status_by_kind(error: errors.RaggedError, status: int) -> None:
    assert http_status(error) == status
