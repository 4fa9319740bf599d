"""Snakemake adapter: the dataset fingerprint."""

from deltarad.preprocess import write_fingerprint
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    write_fingerprint(snakemake.input.samples, snakemake.output[0])
