"""Snakemake adapter: the network heads' response probability and risk score per patient."""

from pathlib import Path

from deltarad import io
from deltarad.runlog import log_to
from deltarad.segment.stage import network_predictions

with log_to(snakemake.log[0]):
    table = network_predictions(
        snakemake.params.methods,
        Path(snakemake.params.results),
        Path(snakemake.input.samples),
        device=snakemake.config["segmentation"]["device"],
        mask_label=snakemake.params.mask_label,
        extra_channels=list(snakemake.params.channels),
    )
    io.write_table(table, snakemake.output[0])
