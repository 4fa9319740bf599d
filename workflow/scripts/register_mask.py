"""Snakemake adapter: a later scan's drawn mask through its registration onto the baseline."""

from deltarad.register import propagate_mask_file
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    inp = snakemake.input
    voxels = propagate_mask_file(inp.mask, inp.fixed, inp.transform, snakemake.output[0])
    print(f"{voxels} tumour voxels" + (" (complete response)" if voxels == 0 else ""))
