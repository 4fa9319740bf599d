"""Snakemake adapter: validate the sheets; on failure list every problem and stop."""

from deltarad.cohort import ValidationSettings, validate_and_write
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    validate_and_write(
        snakemake.input.samples,
        snakemake.input.clinical,
        ValidationSettings(**snakemake.params.settings),
        snakemake.output.samples,
        snakemake.output.clinical,
    )
