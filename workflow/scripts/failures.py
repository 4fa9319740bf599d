"""Snakemake adapter: every stage's dropped patients -> tables/failures.tsv."""

from deltarad.qc import merge_failures
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    merge_failures(list(snakemake.input), snakemake.output[0])
