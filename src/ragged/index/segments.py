"""Segment files: the one copy of every page's vectors (format 3).

A segment file (``segments/00000001.seg``) is a run of blocks, each the
vectors of consecutive pages of one document, appended in commit order::

    block  = header (64 bytes) + vectors (n x dim fp16, C order) + padding to 64 bytes
    header = magic, document hash (32 bytes), first page, pages,
             the document's page count, vectors, width (little-endian u32 each)

A block is one of two kinds, told apart by its magic: ``RGSEG3\\0\\0``
holds the pages' vectors, ``RGPOOL3\\0`` their pooled centroids (the
candidate stage, :mod:`ragged.multivector.pooling`), written just after
the vectors they summarise.

Search memory-maps the files and reads a block's vectors in place. The
catalog says where each committed document's blocks are (:class:`Extent`);
bytes past the last committed block are a write that never committed and
are cut off by the next writer. Files are appended to until they pass
:data:`SEGMENT_BYTES`, so their number grows with the data, not with the
commits. The headers make the files self-describing: they say which
document a block belongs to, so a block read through a wrong catalog entry
is caught, and a lost catalog can be rebuilt (see
:mod:`ragged.index.catalog_log`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from ragged.errors import IndexStoreError
from ragged.index.files import UMASK, check_doc_id, ensure_folder, refuse_link, storage_error, sync_folder

SEGMENTS = "segments"
SEGMENT_BYTES = 256 * 1024**2  # a file is closed to appends once past this
MAGIC = b"RGSEG3\0\0"  # a block of page vectors
POOL_MAGIC = b"RGPOOL3\0"  # a block of pooled centroids (the candidate stage)
HEADER = struct.Struct("<8s32s5I")  # magic, hash, first page, pages, document pages, vectors, width
HEADER_BYTES = 64
READ_AHEAD = 256 * 2**20  # bytes a reader of scattered blocks hints ahead of what it reads
T = TypeVar("T")
ALIGN = 64


class SegmentDamaged(IndexStoreError):
    """A block is missing, cut short, or not the one the catalog names."""


@dataclass(frozen=True)
class Extent:
    """Where consecutive pages of one document lie: a block of a segment file."""

    file: int
    offset: int  # of the block's header, bytes
    first_page: int  # 1-based, in the document
    pages: int
    vectors: int

    def end(self, dim: int) -> int:
        """The byte just past the block (padding included)."""
        return self.offset + _padded(HEADER_BYTES + self.vectors * dim * 2)

    def as_list(self) -> list[int]:
        return [self.file, self.offset, self.first_page, self.pages, self.vectors]

    @classmethod
    def from_list(cls, raw: list[int]) -> Extent:
        file, offset, first, pages, vectors = (int(x) for x in raw)
        if min(file, offset, first - 1, pages - 1, vectors) < 0:
            raise ValueError(f"bad extent {raw!r}")
        return cls(file, offset, first, pages, vectors)


def _padded(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def segment_name(number: int) -> str:
    return f"{number:08d}.seg"


def segment_number(name: str) -> int | None:
    """The number of a segment file's name, None for anything else."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "seg" and len(stem) == 8 and stem.isdigit() else None


def _header(doc_hash: str, first_page: int, pages: int, doc_pages: int, vectors: int, dim: int,
            magic: bytes = MAGIC) -> bytes:
    packed = HEADER.pack(magic, bytes.fromhex(doc_hash), first_page, pages, doc_pages, vectors, dim)
    return packed.ljust(HEADER_BYTES, b"\0")


class SegmentWriter:
    """Appends blocks for the single writer. ``ends`` are the committed ends of
    the files, ``last`` the newest file's number (numbers are never reused)."""

    def __init__(self, folder: Path, dim: int, ends: dict[int, int], last: int) -> None:
        self.folder, self.dim = folder, dim
        self.ends = dict(ends)
        self.last = last
        self._fd: int | None = None
        self._unsynced = False  # an append made with sync=False and not synced since
        self.touched: set[int] = set()  # files appended to since the last commit recorded their ends

    def _open(self, need: int) -> int:
        end = self.ends.get(self.last, 0)
        if self.last == 0 or (end > 0 and end + need > SEGMENT_BYTES):
            self.close()
            self.last += 1
            end = 0
        if self._fd is None:
            folder = ensure_folder(refuse_link(self.folder))
            path = refuse_link(folder / segment_name(self.last))
            created = not path.exists()
            try:
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~UMASK)
                if created:
                    os.fchmod(self._fd, 0o666 & ~UMASK)  # the umask ragged read, as every file it writes
                os.ftruncate(self._fd, end)  # cut off a write that never committed
            except OSError as exc:
                raise storage_error(exc, path) from exc
            if created:
                sync_folder(folder)
        return self._fd

    def append(self, doc_hash: str, first_page: int, doc_pages: int, lengths: list[int],
               vectors: np.ndarray, magic: bytes = MAGIC, sync: bool = True) -> Extent:
        """Append the vectors ((sum(lengths), dim) fp16) of pages ``first_page``
        on (a block of ``magic``'s kind), synced to disk before this returns
        unless ``sync`` is false (the caller syncs a later append: one sync for both)."""
        check_doc_id(doc_hash)
        data = np.ascontiguousarray(vectors, dtype=np.float16)
        size = _padded(HEADER_BYTES + data.nbytes)
        fd = self._open(size)
        offset = self.ends.get(self.last, 0)
        header = _header(doc_hash, first_page, len(lengths), doc_pages, int(data.shape[0]), self.dim, magic)
        pad = b"\0" * (size - HEADER_BYTES - data.nbytes)
        path = self.folder / segment_name(self.last)
        try:
            os.pwritev(fd, [header, data.data.cast("B"), pad], offset)
            if sync:
                os.fdatasync(fd)
        except OSError as exc:
            raise storage_error(exc, path) from exc
        self._unsynced = not sync
        self.ends[self.last] = offset + size
        self.touched.add(self.last)
        return Extent(self.last, offset, first_page, len(lengths), int(data.shape[0]))

    def close(self) -> None:
        """Close the newest file (synced first if an append left it unsynced)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._unsynced:
                    os.fdatasync(fd)
                    self._unsynced = False
            except OSError as exc:
                raise storage_error(exc, self.folder / segment_name(self.last)) from exc
            finally:
                os.close(fd)


class SegmentMaps:
    """Segment files memory-mapped for reading (copy-on-write: writable views, files untouched).

    A file is mapped once, at its size then; a later snapshot that reaches
    past it maps it again. An open map keeps a file readable after a
    compaction removed it."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder, self.dim = folder, dim
        self._maps: dict[int, np.ndarray] = {}

    def hold(self, number: int) -> int:
        """Map file ``number`` now (for a snapshot, so a later removal cannot take
        it away); its size in bytes."""
        return int(self._map(number, 1).shape[0])

    def _map(self, number: int, need: int) -> np.ndarray:
        held = self._maps.get(number)
        if held is not None and held.shape[0] >= need:
            return held
        path = refuse_link(refuse_link(self.folder) / segment_name(number))
        try:
            size = path.stat().st_size
            if size < need or size == 0:
                raise SegmentDamaged(f"{path} is {size} bytes, shorter than the {need} its catalog records")
            mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=(size,))
        except FileNotFoundError as exc:
            raise SegmentDamaged(f"{path} is missing") from exc
        except (OSError, ValueError) as exc:
            raise SegmentDamaged(f"{path} cannot be read ({exc})") from exc
        self._maps[number] = mapped
        return mapped

    def vectors(self, doc_hash: str, extent: Extent, magic: bytes = MAGIC) -> np.ndarray:
        """The block's vectors (of ``magic``'s kind), (vectors, dim) fp16, a view of the map."""
        mapped = self._map(extent.file, extent.end(self.dim))
        head = bytes(mapped[extent.offset : extent.offset + HEADER.size])
        found, raw_hash, first, pages, _, vectors, dim = HEADER.unpack(head)
        if (found, raw_hash.hex(), first, pages, vectors, dim) != (
                magic, doc_hash, extent.first_page, extent.pages, extent.vectors, self.dim):
            what = "pooled vectors of pages" if magic == POOL_MAGIC else "pages"
            raise SegmentDamaged(f"{self.folder / segment_name(extent.file)} at byte {extent.offset} does not hold "
                                 f"{what} {extent.first_page}-{extent.first_page + extent.pages - 1} of "
                                 f"document {doc_hash[:12]}")
        start = extent.offset + HEADER_BYTES
        data = mapped[start : start + extent.vectors * self.dim * 2]
        return data.view(np.float16).reshape(extent.vectors, self.dim)

    def prefetch(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        """Ask the kernel to start reading these (file, offset, bytes) ranges
        now, all at once: a search that reads many small blocks from a cold
        page cache then waits on the disk once, with every read in flight,
        instead of once per page fault. Only a hint: where the platform has
        no ``posix_fadvise``, or a file cannot be opened, nothing happens."""
        advise, willneed = getattr(os, "posix_fadvise", None), getattr(os, "POSIX_FADV_WILLNEED", None)
        if advise is None or willneed is None:
            return
        by_file: dict[int, list[tuple[int, int]]] = {}
        for number, offset, size in ranges:
            if size > 0:  # a length of 0 would mean "to the end of the file"
                by_file.setdefault(number, []).append((offset, size))
        for number, spans in by_file.items():
            try:
                fd = os.open(self.folder / segment_name(number), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue  # reading it says what is wrong
            try:
                for offset, size in spans:
                    advise(fd, offset, size, willneed)
            except OSError:
                pass
            finally:
                os.close(fd)

    def release(self) -> None:
        self._maps.clear()


def read_ahead(maps: SegmentMaps, items: Sequence[T], spans: Callable[[T], list[tuple[int, int, int]]]) -> Iterator[T]:
    """``items`` in order, each one's (file, offset, bytes) ranges (``spans``)
    hinted to the kernel before it is reached, about :data:`READ_AHEAD`
    bytes ahead of the reader (topped up in groups of half that; at most one
    item more): a search of a few hundred scattered pages is read in
    parallel, and a full scan does not ask for more than the page cache can
    keep until it is read."""
    ranges = [spans(item) for item in items]
    sizes = [sum(size for _, _, size in r) for r in ranges]
    hinted = ahead = 0  # items hinted so far; bytes hinted and not yet read
    for n, item in enumerate(items):
        if ahead <= READ_AHEAD // 2:
            group: list[tuple[int, int, int]] = []
            while hinted < len(items) and (hinted <= n or ahead < READ_AHEAD):
                group += ranges[hinted]
                ahead += sizes[hinted]
                hinted += 1
            maps.prefetch(group)
        yield item
        ahead -= sizes[n]


@dataclass(frozen=True)
class ScannedBlock:
    """A block found by reading a segment file's headers (for rebuilding a lost catalog)."""

    doc_hash: str
    doc_pages: int
    extent: Extent


def scan(folder: Path, dim: int) -> Iterator[ScannedBlock]:
    """Every whole block of page vectors of every segment file, in file order
    (a torn tail ends a file; blocks of pooled vectors are passed over)."""
    numbers = sorted(n for n in (segment_number(p.name) for p in folder.iterdir()) if n is not None)
    for number in numbers:
        path = folder / segment_name(number)
        size = path.stat().st_size
        with path.open("rb") as fh:
            offset = 0
            while offset + HEADER_BYTES <= size:
                fh.seek(offset)
                magic, raw_hash, first, pages, doc_pages, vectors, width = HEADER.unpack(fh.read(HEADER.size))
                extent = Extent(number, offset, first, pages, vectors)
                if magic not in (MAGIC, POOL_MAGIC) or width != dim or pages < 1 or extent.end(dim) > size:
                    break
                if magic == MAGIC:
                    yield ScannedBlock(raw_hash.hex(), doc_pages, extent)
                offset = extent.end(dim)
