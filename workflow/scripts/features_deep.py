"""Snakemake adapter: deep encoder features of one patient's tumour and rings, all timepoints.

The encoder reads each timepoint's channels: the reference image (input ``{timepoint}_image``),
then the study's extra channels' (inputs ``{timepoint}__{channel}_image``).
"""

from pathlib import Path

from deltarad import io
from deltarad.features.deep import write_patient_deep
from deltarad.features.table import patient_modality
from deltarad.runlog import log_to
from deltarad.segment.stage import patient_channels

with log_to(snakemake.log[0]):
    patient = snakemake.wildcards.patient
    timepoints = snakemake.params.timepoints
    extra = snakemake.params.channels
    write_patient_deep(
        patient,
        Path(snakemake.params.model_folder),
        {tp: (snakemake.input[f"{tp}_image"], snakemake.input[f"{tp}_mask"]) for tp in timepoints},
        patient_channels(io.read_tsv(snakemake.input.samples), patient, extra),
        snakemake.params.settings,
        patient_modality(snakemake.input.samples, patient),
        snakemake.output[0],
        device=snakemake.config["segmentation"]["device"],
        mask_sources=snakemake.params.masks,
        extra_images={
            tp: [snakemake.input[f"{tp}__{ch}_image"] for ch in extra] for tp in timepoints
        },
    )
