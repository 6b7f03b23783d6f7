"""The one Markdown table writer (results files, benchmark tables, CLI output)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub-flavoured Markdown table. ``align``: one character per column, ``l`` or ``r``
    (default: all left); cells are written with ``str``. No trailing newline."""
    if align is not None and len(align) != len(header):
        raise ValueError(
            f"markdown_table: align {align!r} has {len(align)} columns, not {len(header)}"
        )
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"markdown_table: row {list(r)} has {len(r)} cells, not {len(header)}")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in (align or "l" * len(header)))
    lines = ["| " + " | ".join(map(str, header)) + " |", rule]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
