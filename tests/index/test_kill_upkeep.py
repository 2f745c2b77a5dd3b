"""``kill -9`` during compaction and pruning: every committed page once, nothing half-visible."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragged.index.store import IndexStore
from tests.fakes import cpu_searcher

DIM = 8
KEPT = list(range(16, 31))

# Run in a child: build 30 documents in small segment files, remove the
# first 15, then upkeep with nothing retained, killing itself at POINT.
CHILD = r"""
import os, signal, sys, threading
from pathlib import Path
import numpy as np
from ragged.index import catalog_log, page_table, segments, upkeep, writing
from ragged.index.store import IndexStore

index, point = Path(sys.argv[1]), sys.argv[2]
page_table.RETAIN_S = upkeep.RETAIN_S = 0.0
writing.UPKEEP_MIN_COMMITS = 10**6  # only the upkeep below
segments.SEGMENT_BYTES = 3400  # four documents a file (each 256 bytes of vectors, 576 pooled)
catalog_log.COMPACT_MIN_BYTES = 10**9

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def vectors(n):
    rng = np.random.default_rng(n)
    return [rng.standard_normal((5, 8)).astype(np.float32) for _ in range(2)]

store = IndexStore.open_for_writing(index, "org/model")
for n in range(1, 31):
    store.add_document(f"{n:064x}", f"/docs/{n}.pdf", vectors(n))
store.remove_documents([f"{n:064x}" for n in range(1, 16)])

if point == "relocate":
    real = writing.IndexWriter._relocate
    calls = []
    def hooked(self, *a, **k):
        real(self, *a, **k)
        calls.append(1)
        if len(calls) == 1:
            die()
    writing.IndexWriter._relocate = hooked
elif point == "retired":
    writing.IndexWriter._delete_retired = lambda self, now=None: die()
elif point == "deleting":
    real_unlink = Path.unlink
    def unlink(self, missing_ok=False):
        real_unlink(self, missing_ok=missing_ok)
        if self.suffix == ".seg":
            die()
    Path.unlink = unlink
elif point == "optimize":
    real_opt = page_table.PageTable.upkeep
    def opt(self):
        threading.Timer(0.05, die).start()
        real_opt(self)
        die()
    page_table.PageTable.upkeep = opt
elif point == "pruned":
    real_opt = page_table.PageTable.upkeep
    page_table.PageTable.upkeep = lambda self: (real_opt(self), die())
elif point == "catalog":
    real_atomic = catalog_log.atomic_write
    catalog_log.atomic_write = lambda path, write: real_atomic(path, lambda fh: (fh.write(b"half"), die()))
elif point == "stage":  # an index whose stage is lost: upkeep pools it again, killed after one document
    for h, e in list(store._log.state.docs.items()):
        store._record({"op": "relocate", "hash": h, "pooled": [], "extents": [x.as_list() for x in e.extents]})
    real_record = writing.IndexWriter._record
    def record(self, rec):
        real_record(self, rec)
        if rec.get("op") == "relocate" and rec.get("pooled"):
            die()
    writing.IndexWriter._record = record
elif point == "catalog-written":
    real_gens = catalog_log.generations
    catalog_log.generations = lambda folder: die()
if point.startswith("catalog"):
    store._log.compact()
else:
    store.upkeep()
print("not killed")
"""


def expected_scores() -> np.ndarray:
    query = np.ones((3, DIM))
    out = []
    for n in KEPT:
        rng = np.random.default_rng(n)
        for _ in range(2):
            page = rng.standard_normal((5, DIM)).astype(np.float32).astype(np.float16).astype(np.float64)
            out.append((query @ page.T).max(axis=1).sum())
    return np.array(out)


def check(index: Path) -> None:
    catalog = IndexStore.open(index).catalog()
    assert catalog.documents == [f"{n:064x}" for n in KEPT]
    assert [(p.doc_hash, p.page) for p in catalog.pages] == [(f"{n:064x}", k) for n in KEPT for k in (1, 2)]
    scores = cpu_searcher(IndexStore.open(index)).score_all([np.ones((3, DIM), np.float32)])
    np.testing.assert_allclose(scores[:, 0], expected_scores(), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["relocate", "retired", "deleting", "optimize", "pruned", "catalog",
                                   "catalog-written", "stage"])
def test_kill_during_upkeep(tmp_path: Path, point: str) -> None:
    index = tmp_path / "index"
    child = subprocess.run([sys.executable, "-c", CHILD, str(index), point], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    check(index)  # as the kill left it
    store = IndexStore.open_for_writing(index, "org/model")  # the next writer clears and goes on
    store.upkeep()
    store.close()
    check(index)
    live = IndexStore.open(index).catalog()
    used = {e.file for extents in live.extents.values() for e in extents}
    assert used <= {int(p.stem) for p in (index / "segments").glob("*.seg")}
    assert IndexStore.open(index).pages.doc_hashes() == set(live.documents)
    assert bool(live.staged.all())  # every page has its candidate stage (pooled again where a kill left none)
