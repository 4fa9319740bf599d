"""Snakemake adapter: fit and validate the response and survival models, write their tables."""

from deltarad.model.run import run_models
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    run_models(
        snakemake.input.features,
        snakemake.input.clinical,
        snakemake.input.samples,
        {k: v for k, v in snakemake.output.items()},
        snakemake.params.settings,
        latent=snakemake.input.get("latent"),
        network=snakemake.input.get("network"),
        threads=snakemake.threads,
    )
