"""Snakemake adapter: generate one synthetic patient."""

from deltarad.runlog import log_to
from deltarad.synth import SynthConfig, simulate_patient

with log_to(snakemake.log[0]):
    cfg = SynthConfig.from_config(snakemake.params.synthetic)
    patient = next(p for p in cfg.patients() if p.patient_id == snakemake.wildcards.patient)
    simulate_patient(cfg, patient, snakemake.params.root)
