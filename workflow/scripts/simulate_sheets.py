"""Snakemake adapter: gather per-patient records into samples.tsv and clinical.tsv."""

from deltarad.runlog import log_to
from deltarad.synth import merge_patient_records

with log_to(snakemake.log[0]):
    merge_patient_records(list(snakemake.input), snakemake.params.root)
