"""Writing results for people: ``bon`` (best-of-N Markdown, rich and matplotlib tables/plots),
``html`` (the self-contained results.html pages), ``tables`` (the one Markdown table writer).

The names below were ``hsrm.report``'s before it became a package; they stay importable here.
"""

from hsrm.report.bon import (
    bon_figure,
    bon_markdown,
    bon_rows,
    plot_bon,
    rich_table,
    small_store_warnings,
)

__all__ = [
    "bon_figure",
    "bon_markdown",
    "bon_rows",
    "plot_bon",
    "rich_table",
    "small_store_warnings",
]
