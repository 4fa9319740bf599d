"""Snakemake adapter: train one network preset on the training centres."""

from pathlib import Path

from deltarad.runlog import log_to
from deltarad.segment.stage import run_training

with log_to(snakemake.log[0]):
    run_training(
        snakemake.wildcards.method,
        snakemake.params.settings,
        Path(snakemake.params.results),
        Path(snakemake.input.samples),
        Path(snakemake.input.clinical),
        list(snakemake.params.external),
        Path(snakemake.output.plan).parent,
        threads=snakemake.threads,
        # Read here, not a param: moving to a GPU must not retrain.
        device=snakemake.config["segmentation"]["device"],
        excluded_path=Path(snakemake.input.excluded),
        extra_channels=list(snakemake.params.channels),
    )
