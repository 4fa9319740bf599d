"""Snakemake adapter: gather per-scan registration QC; list the gate's drops."""

from deltarad.qc import collect_registration_qc
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    collect_registration_qc(
        list(snakemake.input),
        snakemake.params.gate,
        snakemake.output.table,
        snakemake.output.failures,
    )
