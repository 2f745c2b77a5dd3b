"""The resident copy: the form the memory policy allows, hysteresis, atomic refresh."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragged.errors import IndexStoreError
from ragged.gpu import DeviceManager
from ragged.index.resident import ENTER_SHARE, RESIDENT_SHARE, ResidentIndex, choose_form
from ragged.index.store import IndexStore
from tests.fakes import cpu_searcher

DIM = 8
MODEL = "org/model"
MiB = 2**20


def doc(n: int) -> str:
    return f"{n:064x}"


def pages(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.standard_normal((6, DIM)).astype(np.float32) for _ in range(2)]


def cpu():  # type: ignore[no-untyped-def]
    return DeviceManager().cpu()


def test_forms_in_order_with_hysteresis() -> None:
    vectors, pooled = 1_000_000, 20_000  # f32: 30.5 MiB at width 8; fp16: 15.3 MiB; the stage (f32): 0.6 MiB
    stage = pooled * DIM * 4
    f32, fp16 = vectors * DIM * 4 + stage, vectors * DIM * 2 + stage
    allowance = lambda need: int(need / RESIDENT_SHARE)  # noqa: E731  (a budget whose allowance is exactly need)
    choice = choose_form(vectors, pooled, DIM, cpu(), allowance(f32) * 2, "streamed")
    assert choice.form == "f32 in RAM" and choice.stage and choice.element_bytes == 4
    # Just under the limit: kept when already held, not taken when coming from another form.
    budget = int(allowance(f32) * 1.05)
    assert choose_form(vectors, pooled, DIM, cpu(), budget, "f32 in RAM").form == "f32 in RAM"
    assert choose_form(vectors, pooled, DIM, cpu(), budget, "fp16 in RAM").form == "fp16 in RAM"
    # f32 does not fit: fp16 in RAM, which says why.
    choice = choose_form(vectors, pooled, DIM, cpu(), int(allowance(fp16) / ENTER_SHARE) + 8, "f32 in RAM")
    assert choice.form == "fp16 in RAM" and choice.element_bytes == 2 and "f32 in RAM would need" in choice.reason
    # Neither: the stage alone, the vectors mapped; it says what the others would need.
    choice = choose_form(vectors, pooled, DIM, cpu(), allowance(fp16) // 2, "fp16 in RAM")
    assert choice.form == "stage in RAM, vectors mapped" and choice.stage and choice.element_bytes == 0
    assert "f32 in RAM would need" in choice.reason and "fp16 in RAM would need" in choice.reason
    # Not even the stage: streamed.
    choice = choose_form(vectors, pooled, DIM, cpu(), allowance(stage) // 2, "stage in RAM, vectors mapped")
    assert choice.form == "streamed" and not choice.holds
    assert choose_form(vectors, pooled, DIM, cpu(), int(allowance(fp16) / ENTER_SHARE) + 8,
                       "streamed").form == "fp16 in RAM"
    assert choose_form(vectors, pooled, DIM, cpu(), None, "f32 in RAM").form == "streamed"
    # An index from before the stage holds its vectors or streams, and says why.
    choice = choose_form(vectors, 0, DIM, cpu(), allowance(fp16) // 2, "streamed")
    assert choice.form == "streamed" and "no candidate stage yet" in choice.reason


def test_the_resident_copy_is_not_counted_against_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget read while the copy is held counts the copy as used; with it
    counted, every other refresh would flip resident and streamed."""
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(1), "/d/1.pdf", pages(1))
    need = (16 + 6 * 16) * DIM * 4  # f32 vectors and stage (16 pooled a page) of all six pages at the end
    held = {"bytes": 0}
    free = int(need / RESIDENT_SHARE / ENTER_SHARE) + 64  # fits, with the margin, when nothing is held

    def budget(self: object, info: object) -> int:
        return free - held["bytes"]  # what is in use includes the resident copy

    monkeypatch.setattr("ragged.gpu.policy.MemoryPolicy.batch_budget", budget)
    resident = ResidentIndex(IndexStore.open(index), cpu(), DeviceManager(), background=False)
    forms = [resident.form]
    for n in range(2, 6):
        held["bytes"] = resident.memory_bytes
        with IndexStore.open_for_writing(index, MODEL) as store:
            store.add_document(doc(n), f"/d/{n}.pdf", [np.ones((1, DIM), np.float32)])
        resident.refresh()
        forms.append(resident.form)
    assert forms == ["f32 in RAM"] * 5


def test_streams_while_loading_then_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        for n in (1, 2):
            store.add_document(doc(n), f"/d/{n}.pdf", pages(n))
    gate = __import__("threading").Event()
    real = ResidentIndex._load

    def slow(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ResidentIndex, "_load", slow)
    resident = ResidentIndex(IndexStore.open(index), cpu(), DeviceManager())
    assert resident.form == "streamed" and resident.loading == "f32 in RAM"  # ready at once
    query = [np.ones((3, DIM), np.float32)]
    streamed = cpu_searcher(resident).score_all(query)
    gate.set()
    for _ in range(100):
        if resident.refresh():
            break
        __import__("time").sleep(0.05)
    assert resident.form == "f32 in RAM" and resident.memory_bytes == (24 + 4 * 16) * DIM * 4  # vectors, stage
    np.testing.assert_allclose(cpu_searcher(resident).score_all(query), streamed, rtol=1e-6)
    resident.release()


def test_refresh_is_atomic_and_sees_a_later_text_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(1), "/d/1.pdf", pages(1))
    resident = ResidentIndex(IndexStore.open(index), cpu(), DeviceManager(), background=False)
    before = (resident.version, resident.catalog, resident.store)
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(2), "/d/2.pdf", pages(2))
        store.set_text_model("all-MiniLM-L6-v2", 384)

    def broken(self: IndexStore) -> None:
        raise IndexStoreError("the index is damaged: reading failed")

    monkeypatch.setattr(IndexStore, "catalog", broken)
    with pytest.raises(IndexStoreError):
        resident.refresh()
    assert (resident.version, resident.catalog, resident.store) == before  # nothing half-switched
    monkeypatch.undo()
    assert resident.refresh()  # the same commits read again
    assert resident.catalog.documents == [doc(1), doc(2)]
    assert resident.store.meta is not None and resident.store.meta.text_model == "all-MiniLM-L6-v2"
    assert json.loads((index / "ragged-index.json").read_text())["text_model"] == "all-MiniLM-L6-v2"
    resident.release()



def test_refresh_reads_only_what_was_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's look for new commits costs the change: the catalog's
    snapshot is read once, then only the log lines appended since."""
    from ragged.index.catalog_log import CatalogReader

    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(1), "/d/1.pdf", pages(1))
    loads: list[CatalogReader] = []
    real = CatalogReader._load
    monkeypatch.setattr(CatalogReader, "_load", lambda self, g: (loads.append(self), real(self, g))[1])
    resident = ResidentIndex(IndexStore.open(index), cpu(), DeviceManager(), background=False)
    for n in range(2, 5):
        with IndexStore.open_for_writing(index, MODEL) as store:
            store.add_document(doc(n), f"/d/{n}.pdf", pages(n))
        assert resident.refresh()
    assert resident.catalog.documents == [doc(n) for n in range(1, 5)]
    assert loads.count(resident._reader) == 1  # the snapshot once; three commits read as appended lines
    resident.release()


def test_a_commit_is_appended_even_when_the_memory_figures_moved(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The form's reason quotes the memory of the moment; a commit that keeps
    the same form must be appended, not make the server load everything again."""
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(1), "/d/1.pdf", pages(1))
    budgets = iter(range(8 * 2**30, 9 * 2**30, 64 * 2**20))  # a little more free memory at every look
    monkeypatch.setattr(ResidentIndex, "_budget", lambda self: next(budgets))
    resident = ResidentIndex(IndexStore.open(index), cpu(), DeviceManager(), background=False)
    reloads: list[int] = []
    real = ResidentIndex._reload
    monkeypatch.setattr(ResidentIndex, "_reload", lambda self, *a: (reloads.append(1), real(self, *a))[1])
    reasons = {resident.choice.reason}
    for n in range(2, 5):
        with IndexStore.open_for_writing(index, MODEL) as store:
            store.add_document(doc(n), f"/d/{n}.pdf", pages(n))
        assert resident.refresh()
        reasons.add(resident.choice.reason)
    assert len(reasons) > 1  # the figures did move
    assert reloads == []  # and every commit was appended
    assert resident.catalog.documents == [doc(n) for n in range(1, 5)]
    resident.release()


def test_held_pages_come_in_blocks_of_at_most_the_size_asked(tmp_path: Path) -> None:
    """Candidates taken from a held slab are cut to the search's block size
    (a widened query may take every page: one block of all would not fit a
    device's buffer, nor spread over the CPU's threads)."""
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        for n in range(1, 4):
            store.add_document(doc(n), f"/d/{n}.pdf", pages(n))
    resident = ResidentIndex(IndexStore.open(index), cpu(), DeviceManager(), background=False)
    assert resident.choice.holds and resident.choice.element_bytes
    catalog = resident.catalog
    every = np.arange(len(catalog.pages))
    longest = int(max(p.n_vectors for p in catalog.pages))
    limit = 2 * longest
    blocks = list(resident.page_blocks(every, limit))
    assert len(blocks) > 1 and all(int(b.vectors.shape[0]) <= limit for b in blocks)
    assert np.concatenate([b.positions for b in blocks]).tolist() == every.tolist()  # every page, once, in order
    resident.release()
