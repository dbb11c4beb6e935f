"""The one Markdown table renderer: evaluation tables and the benchmark report both write theirs
with :func:`markdown_table`."""

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub Markdown table, without a trailing newline.

    ``align`` has one letter per column, ``l`` (left) or ``r`` (right); columns it does not
    cover are right-aligned except the first, the usual layout of a name and its numbers.
    Cells are written with ``str``; format numbers before passing them.
    """
    align = align or "l"
    align = align + "r" * (len(header) - len(align))
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} must give l or r for each of the {len(header)} columns")
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "".join("---|" if a == "l" else "---:|" for a in align)]
    for number, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)
