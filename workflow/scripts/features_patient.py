"""Snakemake adapter: pyradiomics features of one patient's tumour and rings, every timepoint and
channel."""

from deltarad.features.table import FeatureSettings, patient_channels, write_patient
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    patient = snakemake.wildcards.patient
    settings = FeatureSettings.from_config(snakemake.params.settings, snakemake.input.params)
    timepoints = snakemake.params.timepoints
    scans = {
        tp: (snakemake.input[f"{tp}_image"], snakemake.input[f"{tp}_mask"]) for tp in timepoints
    }
    extra = {
        tp: {ch: snakemake.input[f"{tp}__{ch}_image"] for ch in snakemake.params.channels}
        for tp in timepoints
    }
    out = snakemake.output
    write_patient(
        patient,
        scans,
        settings,
        out.table,
        out.failures,
        patient_channels(snakemake.input.samples, patient),
        snakemake.params.masks,
        extra,
    )
