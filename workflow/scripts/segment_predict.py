"""Snakemake adapter: one scan's mask predicted by a trained network, on the baseline grid."""

from pathlib import Path

from deltarad.runlog import log_to
from deltarad.segment.stage import run_prediction

with log_to(snakemake.log[0]):
    run_prediction(
        Path(snakemake.input.plan).parent,
        snakemake.wildcards.patient,
        snakemake.wildcards.timepoint,
        Path(snakemake.params.results),
        Path(snakemake.input.samples),
        Path(snakemake.output.mask),
        snakemake.params.overlap,
        device=snakemake.config["segmentation"]["device"],
        extra_channels=list(snakemake.params.channels),
    )
