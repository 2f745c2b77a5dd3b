"""The search results table of ``ragged search``, and what to say when there are none."""

from __future__ import annotations

from rich.table import Table

from ragged.cli.output import plain, printable, shorten_left
from ragged.index.results import SearchResult


def no_hits_advice(mode: str, pages: int) -> str:
    """What to try when a search found nothing."""
    if not pages:
        return "The index has no pages: add documents with 'ragged ingest'."
    if mode == "keyword":
        return "No page holds these words: try other words, or --mode text or hybrid for questions."
    return "No page matched: try other words, or another --mode."


def hits_table(result: SearchResult, header: str, width: int) -> Table:
    """The hits as a table that fits ``width`` columns: paths shortened from
    the left, so the file name stays."""
    fused = result.mode == "hybrid"
    rows: list[list[str]] = []
    for n, hit in enumerate(result.hits, 1):
        row = [str(n), f"{hit.score:.3f}", printable(hit.path), str(hit.page)]
        if fused:
            row.append(", ".join(f"{name} {rank}" for name, rank in hit.signals.items()))
        rows.append(row)
    columns = ["#", "score", "file", "page"] + (["found by (rank)"] if fused else [])
    others = sum(max(len(columns[c]), *(len(r[c]) for r in rows)) for c in range(len(columns)) if c != 2)
    room = max(16, width - others - 3 * len(columns) - 1)  # each column: padding 2 and a border; and the edge
    table = Table(title=plain(header))
    for column, justify in zip(columns, ("right", "right", "left", "right", "left"), strict=False):
        table.add_column(column, justify=justify, no_wrap=column == "file")  # type: ignore[arg-type]
    for row in rows:
        row[2] = shorten_left(row[2], room)
        table.add_row(*(plain(cell) if c == 2 else cell for c, cell in enumerate(row)))
    return table
