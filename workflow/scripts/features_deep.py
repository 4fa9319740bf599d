"""Snakemake adapter: deep encoder features of one patient's tumour and rings, all timepoints."""

from pathlib import Path

from deltarad.features.deep import write_patient_deep
from deltarad.features.table import patient_modality
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    patient = snakemake.wildcards.patient
    scans = {
        tp: (snakemake.input[f"{tp}_image"], snakemake.input[f"{tp}_mask"])
        for tp in snakemake.params.timepoints
    }
    write_patient_deep(
        patient,
        Path(snakemake.params.model_folder),
        scans,
        snakemake.params.settings,
        patient_modality(snakemake.input.samples, patient),
        snakemake.output[0],
        device=snakemake.config["segmentation"]["device"],
        mask_sources=snakemake.params.masks,
    )
