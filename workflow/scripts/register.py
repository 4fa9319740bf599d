"""Snakemake adapter: register one later scan onto its baseline and measure it."""

import json
from pathlib import Path

from deltarad.register import RegistrationSettings, register_scan
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    inp, out = snakemake.input, snakemake.output
    cohort = snakemake.params.truth_cohort
    truth = {"cohort": cohort, "mask": inp.truth_mask} if cohort else None
    record = json.loads(Path(inp.moving_record).read_text())
    register_scan(
        snakemake.wildcards.patient,
        snakemake.wildcards.timepoint,
        snakemake.params.modality,
        inp.fixed,
        inp.moving,
        inp.get("moving_mask"),
        RegistrationSettings.from_config(snakemake.params.settings),
        out.image,
        None,
        out.transform,
        out.qc,
        fixed_mask_path=inp.get("fixed_mask"),
        truth=truth,
        out_figure=out.figure,
        threads=snakemake.threads,
        original=(inp.moving_original, record),
    )
