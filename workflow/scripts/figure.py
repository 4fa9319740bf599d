"""Snakemake adapter: draw one paper figure (or Table 1) from cached tables."""

from deltarad.figures.build import draw
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    draw(
        snakemake.params.figure,
        {k: v for k, v in snakemake.input.items() if k != "images"},
        dict(snakemake.output.items()),
        snakemake.params.options,
        snakemake.params.style,
    )
