"""The retrieval benchmark's second corpus: real prose, labelled by hand.

Pages of the Python Language Reference as every CPython ships it
(``pydoc_data.topics``, the text ``help("with")`` prints), read at run
time, not copied here: 28 topics, each reflowed to at most two letter
pages. Unlike the first corpus (short pages on unrelated subjects), every
page here is about the same language and shares most of its words with
the others, so keyword search is noisy and the text model must tell close
pages apart.

A query names its page by a phrase that page holds (``anchor``), so a
Python release that reflows a topic moves the label with the text; a query
whose anchor is missing, or found on more than one page, is left out and
reported.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

from benchmarks.retrieval_corpus import Query

TOPICS = ("assert", "break", "continue", "pass", "del", "return", "raise", "global", "nonlocal", "import", "if",
          "while", "for", "try", "with", "lambda", "yield", "class", "truth", "booleans", "bltin-null-object",
          "bltin-ellipsis-object", "augassign", "slicings", "debugger", "exceptions", "integers", "floating")
WIDTH, LINES, PAGES = 62, 22, 2  # characters a line, lines a page (under a title), pages a topic at most
_ASCII = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2026": "...", "\u2013": "-",
          "\u2014": "-", "\u00a0": " "}


@dataclass(frozen=True)
class Anchored:
    """A question and a phrase of the one page that answers it."""

    text: str
    topic: str
    anchor: str
    kind: str  # "paraphrase" or "exact"


ANCHORED = [
    # In other words than the page's own (some share a word, as real questions do).
    Anchored("how do I leave a loop early", "break", "terminates the nearest enclosing loop", "paraphrase"),
    Anchored("skip to the next round of the iteration", "continue", "next cycle of the nearest", "paraphrase"),
    Anchored("an instruction with no effect, to stub out an empty function body", "pass", "null operation",
             "paraphrase"),
    Anchored("make a name undefined so that using it fails", "del", "Deletion of a name removes", "paraphrase"),
    Anchored("hand a result back to whoever called the function", "return", "leaves the current function call",
             "paraphrase"),
    Anchored("signal an error and attach the original cause to it", "raise", "exception chaining", "paraphrase"),
    Anchored("modify a module-level variable from inside a function", "global", "impossible to assign to a global",
             "paraphrase"),
    Anchored("change a variable of the outer function from an inner function", "nonlocal",
             "nearest enclosing scope excluding", "paraphrase"),
    Anchored("use another module under a different name in my program", "import", 'followed by "as"', "paraphrase"),
    Anchored("choose between alternative branches depending on a condition", "if", "conditional execution",
             "paraphrase"),
    Anchored("keep repeating code as long as a condition holds", "while", "repeated execution", "paraphrase"),
    Anchored("go through each item of a list one by one", "for", "iterate over the elements", "paraphrase"),
    Anchored("catch failures and make sure tidy-up code runs no matter what", "try",
             "exception handlers and/or cleanup code", "paraphrase"),
    Anchored("acquire and release a resource automatically around a block of code", "with",
             "wrap the execution of a block", "paraphrase"),
    Anchored("a small unnamed function written inline", "lambda", "anonymous functions", "paraphrase"),
    Anchored("produce values lazily one at a time from a function", "yield", "generator function instead",
             "paraphrase"),
    Anchored("define a new type of object with its own methods", "class", "A class definition defines",
             "paraphrase"),
    Anchored("when does an empty list count as no in an if test", "truth", "considered false", "paraphrase"),
    Anchored("logical or gives back one of its operands, not just True", "booleans", '"x or y" first evaluates',
             "paraphrase"),
    Anchored("what a function gives back when it has no return statement", "bltin-null-object",
             "explicitly return a value", "paraphrase"),
    Anchored("the three dots object", "bltin-ellipsis-object", "exactly one ellipsis", "paraphrase"),
    Anchored("combining an arithmetic operation with storing the result back", "augassign",
             "combination, in a single statement", "paraphrase"),
    Anchored("extracting part of a sequence by position", "slicings", "selects a range of items", "paraphrase"),
    Anchored("step through my program line by line to find a bug", "debugger", "single stepping", "paraphrase"),
    Anchored("pause the program at a chosen line and inspect it interactively", "debugger", "breakpoint()",
             "paraphrase"),
    Anchored("what happens when an error is never caught", "exceptions", "not handled at all", "paraphrase"),
    Anchored("numbers with a fractional part and an exponent in source code", "floating", "exponentfloat",
             "paraphrase"),
    Anchored("is there a maximum size for whole numbers", "integers", "There is no limit for the length",
             "paraphrase"),
    Anchored("are assertions removed when Python runs optimised", "assert", "command line option", "paraphrase"),
    # A detail only that page has.
    Anchored("AssertionError(expression2)", "assert", "AssertionError(expression2)", "exact"),
    Anchored("StopAsyncIteration", "return", "StopAsyncIteration", "exact"),
    Anchored("with_traceback", "raise", "with_traceback", "exact"),
    Anchored("PEP 3104", "nonlocal", "PEP 3104", "exact"),
    Anchored("elif", "if", "elif", "exact"),
    Anchored("starred_list", "for", "starred_list", "exact"),
    Anchored("three None arguments", "with", 'three "None" arguments', "exact"),
    Anchored("Decimal(0)", "truth", "Decimal(0)", "exact"),
    Anchored("pdb.set_trace", "debugger", "pdb.set_trace()", "exact"),
    Anchored("faulthandler", "debugger", "faulthandler", "exact"),
    Anchored("SystemExit", "exceptions", "SystemExit", "exact"),
    Anchored("0xdeadbeef", "integers", "0xdeadbeef", "exact"),
    Anchored("77e10", "floating", "77e10", "exact"),
    Anchored("Metaclasses", "class", "Metaclasses", "exact"),
    Anchored("exec eval compile", "global", '"compile()" functions', "exact"),
]


def _paragraphs(text: str) -> Iterator[list[str]]:
    for curly, plain in _ASCII.items():
        text = text.replace(curly, plain)
    text = text.encode("ascii", "replace").decode()  # the PDF's standard font covers Latin-1 only
    paragraph: list[str] = []
    for raw in [*text.splitlines(), ""]:
        if re.fullmatch(r"[*=\-^]{3,}", raw.strip()):  # a heading's underline
            continue
        if raw.strip():
            paragraph.append(raw)
        elif paragraph:
            yield paragraph
            paragraph = []


def topic_lines(text: str) -> list[str]:
    """A topic's text as lines of at most ``WIDTH`` characters: prose
    reflowed, indented blocks (grammar, code) kept line by line."""
    lines: list[str] = []
    for paragraph in _paragraphs(text):
        if all(line.startswith("   ") for line in paragraph):
            lines.extend(line.strip()[:WIDTH] for line in paragraph)
        else:
            lines.extend(textwrap.wrap(" ".join(line.strip() for line in paragraph), WIDTH))
        lines.append("")
    return lines


def build() -> tuple[dict[str, list[list[str]]], list[Query], list[str]]:
    """(documents, queries, queries left out and why) from this Python's topics."""
    from pydoc_data.topics import topics

    documents: dict[str, list[list[str]]] = {}
    for topic in TOPICS:
        lines = topic_lines(topics[topic])
        documents[f"python-{topic}.pdf"] = [lines[i : i + LINES] for i in range(0, len(lines), LINES)][:PAGES]
    queries: list[Query] = []
    left_out: list[str] = []
    for item in ANCHORED:
        pages = documents[f"python-{item.topic}.pdf"]
        holding = [n for n, page in enumerate(pages, 1) if item.anchor in " ".join(" ".join(page).split())]
        if len(holding) != 1:
            left_out.append(f"{item.text!r}: its phrase is on {len(holding)} pages of {item.topic}")
            continue
        queries.append(Query(item.text, f"python-{item.topic}.pdf", holding[0], item.kind))
    return documents, queries, left_out
