"""Snakemake adapter: validate the sheets; on failure list every problem and stop."""

from deltarad.cohort import ValidationSettings, mask_policy, validate_and_write
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    validate_and_write(
        snakemake.input.samples,
        snakemake.input.clinical,
        # The mask policy is read from the config, not params: changing it must not rerun this.
        ValidationSettings(**snakemake.params.settings, **mask_policy(snakemake.config)),
        snakemake.output.samples,
        snakemake.output.clinical,
    )
