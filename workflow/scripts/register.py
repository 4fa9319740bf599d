"""Snakemake adapter: register one later scan onto its baseline and measure it."""

from deltarad.register import RegistrationSettings, register_scan
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    inp, out = snakemake.input, snakemake.output
    cohort = snakemake.params.truth_cohort
    truth = {"cohort": cohort, "mask": inp.truth_mask} if cohort else None
    register_scan(
        snakemake.wildcards.patient,
        snakemake.wildcards.timepoint,
        snakemake.params.modality,
        inp.fixed,
        inp.moving,
        inp.moving_mask,
        RegistrationSettings.from_config(snakemake.params.settings),
        out.image,
        out.mask,
        out.transform,
        out.qc,
        fixed_mask_path=inp.fixed_mask,
        truth=truth,
        out_figure=out.figure,
        threads=snakemake.threads,
    )
