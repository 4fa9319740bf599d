"""Paper figures, redrawn from the cached result tables in one publication style.

Every figure function takes DataFrames (or image paths), a :class:`Style` and two output
paths, and writes a PNG and a PDF atomically. :func:`draw` is what the workflow's figure jobs
call; docs/figures.md says how to restyle.

Importing the package loads nothing heavy: the workflow imports :mod:`deltarad.figures.plan`
while parsing, which must not pay for matplotlib. Every drawing module imports
:mod:`deltarad.figures.style`, which selects the non-interactive Agg backend before anything
is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deltarad.figures.style import Style

__all__ = ["Style"]


def __getattr__(name: str) -> Any:
    """`deltarad.figures.Style`, imported on first use (PEP 562)."""
    if name == "Style":
        from deltarad.figures.style import Style

        return Style
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
