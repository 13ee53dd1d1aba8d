"""Griffe extension: kdtemp's docstrings are plain text, so `*` is multiplication, not emphasis.

`T = t0 * gamma**e, or t0 * final_ratio**p` would otherwise render with "e, or t0 * final_ratio" in
bold. Every `*` outside a code span and outside an indented code block is escaped; nothing else of a
docstring changes. Used by mkdocstrings (mkdocs.yml: handlers.python.options.extensions).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def escape_stars(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if line.startswith("    "):  # an indented code block keeps its text as written
            lines.append(line)
            continue
        pieces, last = [], 0
        for match in CODE_SPAN.finditer(line):
            pieces.append(line[last : match.start()].replace("*", "\\*"))
            pieces.append(match.group(0))
            last = match.end()
        pieces.append(line[last:].replace("*", "\\*"))
        lines.append("".join(pieces))
    return "\n".join(lines)


class PlainDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_stars(obj.docstring.value)
