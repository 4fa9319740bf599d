"""Snakemake adapter: the nnU-Net raw dataset of the training scans and its patient-level splits.

Inputs named ``{patient}__{timepoint}`` (the reference channel's image),
``{patient}__{timepoint}__{channel}`` (each extra channel's) and ``{patient}__{timepoint}_mask``;
``excluded`` (the registration gate's failures: those patients are left out); with extra
channels also ``samples`` (the validated samples table), whose modality of each extra
channel names its nnU-Net input channel (``CT`` selects nnU-Net's CT normalisation).
"""

from pathlib import Path

from deltarad import io
from deltarad.qc import failed_patients
from deltarad.runlog import log_to
from deltarad.segment.nnunet import cases_from_inputs, export_training_set
from deltarad.segment.stage import input_channels

with log_to(snakemake.log[0]):
    s, p = snakemake.params.settings, snakemake.params
    named = dict(snakemake.input.items())
    extra = list(p.channels)
    # Channel 0 is named after the training centres' modality (the rule's channel_name).
    names = [p.channel_name]
    if extra:
        patients = sorted({c.patient_id for c in cases_from_inputs(named, extra)})
        modalities = input_channels(io.read_tsv(snakemake.input.samples), extra, patients)
        names += [modalities[channel] for channel in extra]
    export_training_set(
        named, Path(p.root), s["dataset_id"], s["dataset_name"], names, s["n_folds"], p.seed,
        p.mask_label, extra, failed_patients(snakemake.input.excluded),
    )  # fmt: skip
