"""Snakemake adapter: write provenance.json."""

from deltarad import provenance
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    provenance.write(
        snakemake.params.config,
        snakemake.input.samples,
        [*snakemake.params.sheets, snakemake.input.clinical],
        snakemake.params.repo,
        snakemake.output[0],
        parameter_files={"features.params": snakemake.input.radiomics_params},
    )
