"""Paper figures, redrawn from the cached result tables in one publication style.

Every figure function takes DataFrames (or image paths), a :class:`Style` and two output
paths, and writes a PNG and a PDF atomically. :func:`draw` is what the workflow's figure jobs
call; docs/figures.md says how to restyle.
"""

import matplotlib

matplotlib.use("Agg")

from deltarad.figures.style import Style  # noqa: E402

__all__ = ["Style"]
