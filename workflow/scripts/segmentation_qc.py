"""Snakemake adapter: Dice and HD95 of every predicted mask against its reference."""

from deltarad import io
from deltarad.runlog import log_to
from deltarad.segment.stage import qc_records, segmentation_qc

with log_to(snakemake.log[0]):
    records = qc_records(dict(snakemake.input.items()))
    table = segmentation_qc(records, snakemake.params.mask_label)
    io.write_table(table, snakemake.output[0])
