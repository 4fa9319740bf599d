"""Snakemake adapter: pyradiomics features of one patient's tumour and rings, all timepoints."""

from deltarad.features.table import FeatureSettings, patient_modality, write_patient
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    patient = snakemake.wildcards.patient
    settings = FeatureSettings.from_config(snakemake.params.settings, snakemake.input.params)
    scans = {
        tp: (snakemake.input[f"{tp}_image"], snakemake.input[f"{tp}_mask"])
        for tp in snakemake.params.timepoints
    }
    modality = patient_modality(snakemake.input.samples, patient)
    out = snakemake.output
    write_patient(
        patient, scans, settings, out.table, out.failures, modality, snakemake.params.masks
    )
