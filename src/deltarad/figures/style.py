"""One publication style for every DeltaRad figure, read from the `figures.style` config block.

Why one object: a journal asks for one font, one set of sizes and one colour scheme across all
panels. Every figure function takes a :class:`Style`, draws inside :meth:`Style.context` and
saves through :func:`save`, so changing one config key restyles every figure (and only the
figure jobs rerun, because the style reaches them as a rule parameter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from deltarad import io  # noqa: E402
from deltarad.runlog import UserError  # noqa: E402

# Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies.
OKABE_ITO = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
MM_PER_INCH = 25.4
# Crop to the drawn content (titles and legends outside the axes are never cut off).
TIGHT = {"bbox_inches": "tight", "pad_inches": 0.04}


@dataclass(frozen=True)
class Style:
    """Fonts, sizes, resolution, palette and width shared by all figures."""

    font_family: str = "DejaVu Sans"
    font_size: float = 8.0
    title_size: float = 9.0
    line_width: float = 1.2
    dpi: int = 300
    width_mm: float = 180.0
    palette: tuple[str, ...] = field(default=OKABE_ITO)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Style:
        """The style from the `figures.style` block (missing keys keep their defaults)."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UserError(f"figures.style: unknown key(s) {unknown}; known: {sorted(known)}")
        if "palette" in cfg:
            if not cfg["palette"]:
                raise UserError("figures.style.palette: give at least one colour")
            cfg["palette"] = tuple(cfg["palette"])
        return cls(**cfg)

    @property
    def width_in(self) -> float:
        return self.width_mm / MM_PER_INCH

    def size(self, aspect: float, width_fraction: float = 1.0) -> tuple[float, float]:
        """(width, height) in inches for a figure `aspect` = height / width."""
        width = self.width_in * width_fraction
        return width, width * aspect

    @property
    def max_cols(self) -> int:
        """Panels per row that stay legible at this width (~55 mm each): 3 at full page
        width, 1 in a single journal column."""
        return max(1, min(4, int(self.width_mm // 55)))

    def color(self, i: int) -> str:
        """The i-th palette colour (cycling when there are more series than colours)."""
        return self.palette[i % len(self.palette)]

    def line_color(self, i: int) -> str:
        """The i-th palette colour dark enough for thin lines and small markers on white
        (pale ones, e.g. Okabe-Ito yellow, are skipped; all of them if none is dark)."""
        dark = [c for c in self.palette if _luminance(c) < 0.75] or list(self.palette)
        return dark[i % len(dark)]

    def rc(self) -> dict[str, Any]:
        """matplotlib rcParams of this style."""
        small = max(self.font_size - 1.0, 5.0)
        return {
            "font.family": "sans-serif",
            "font.sans-serif": [self.font_family, "DejaVu Sans"],
            "font.size": self.font_size,
            "axes.titlesize": self.title_size,
            "axes.labelsize": self.font_size,
            "xtick.labelsize": small,
            "ytick.labelsize": small,
            "legend.fontsize": small,
            "legend.title_fontsize": small,
            "figure.titlesize": self.title_size,
            "lines.linewidth": self.line_width,
            "axes.linewidth": 0.8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": matplotlib.cycler(color=list(self.palette)),
            "legend.frameon": False,
            "pdf.fonttype": 42,  # TrueType in the PDF: editable text for journals
            "savefig.dpi": self.dpi,
            "figure.dpi": 100,
        }

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Draw inside this block so every artist picks up the style."""
        with matplotlib.rc_context(self.rc()):
            yield


def _luminance(color: str) -> float:
    """Relative luminance (0 black, 1 white) of a matplotlib colour."""
    r, g, b = to_rgb(color)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def subplots(
    style: Style,
    aspect: float,
    nrows: int = 1,
    ncols: int = 1,
    min_row_mm: float = 40.0,
    width_fraction: float = 1.0,
    **kwargs: Any,
) -> tuple[Figure, Any]:
    """A styled figure `style.width_mm` wide and `aspect` x width high, but at least
    `min_row_mm` per row of panels, so a narrow (one-column) figure does not squash its
    panels under labels of unchanged size. `width_fraction` < 1 for a grid with fewer
    columns than fit (one panel is not stretched to page width). Call inside
    :meth:`Style.context`."""
    kwargs.setdefault("squeeze", False)
    kwargs.setdefault("layout", "constrained")
    width, height = style.size(aspect, width_fraction)
    height = max(height, nrows * min_row_mm / MM_PER_INCH)
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def save(fig: Figure, style: Style, out_png: str | Path, out_pdf: str | Path) -> None:
    """Write the figure as PNG (at `style.dpi`) and PDF, each atomically, then close it.

    The PDF carries no creation date, so an unchanged figure gives unchanged bytes.
    """
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=style.dpi, metadata={"Software": None}, **TIGHT)
    with io.atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None}, **TIGHT)
    plt.close(fig)


def empty_panel(ax: Any, message: str) -> None:
    """A panel that says why it has no data (e.g. a centre without events), instead of crashing."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def legend_below(ax: Axes, style: Style) -> None:
    """Legend under the panel's x label, one entry per line: curves stay visible, labels
    stay whole. The gap is in points (tick labels + x label), whatever the panel's height."""
    gap = offset_copy(ax.transAxes, fig=ax.figure, y=-(2.8 * style.font_size + 4), units="points")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=gap, handlelength=1.5)


def shared_legend(fig: Figure, handles: list[Any], style: Style) -> None:
    """One legend above all panels for series drawn in every panel (the models, in the same
    colour everywhere), in as many columns as the longest label allows at the figure's width: the
    long model names are written once, not under every panel where they overlapped."""
    if not handles:
        return
    longest = max(len(h.get_label()) for h in handles)
    # ~0.6 em per character at the legend font, plus the line sample and the gap (mm).
    entry_mm = longest * 0.6 * max(style.font_size - 1.0, 5.0) * MM_PER_INCH / 72 + 12
    ncols = max(1, min(len(handles), int(fig.get_figwidth() * MM_PER_INCH // entry_mm)))
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols)


def legend_on_top(fig: Figure, ax: Axes) -> None:
    """One legend for all panels, above them (panels share their series and colours)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5))
