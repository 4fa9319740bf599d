"""Snakemake adapter: another channel of a timepoint onto the baseline grid, carried by the
reference channel's registration."""

from deltarad.preprocess import PreprocessSettings
from deltarad.register import carry_channel
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    inp = snakemake.input
    carry_channel(
        inp.original,
        snakemake.params.modality,
        PreprocessSettings.from_config(snakemake.params.settings),
        inp.fixed,
        inp.get("transform"),
        snakemake.output.image,
        snakemake.output.record,
    )
