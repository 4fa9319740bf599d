"""Snakemake adapter: merge per-patient features into features.parquet, add deltas."""

from deltarad.features.table import merge_features
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    merge_features(
        snakemake.input.tables,
        snakemake.input.failures,
        snakemake.output.table,
        snakemake.output.failures,
        excluded=snakemake.input.excluded,
        rel_floor=snakemake.params.reldelta["rel_floor"],
        abs_floor=snakemake.params.reldelta["abs_floor"],
        samples=snakemake.input.samples,
        previous=snakemake.params.previous,
    )
