"""Snakemake adapter: a drawn mask onto its preprocessed image's grid."""

from deltarad.preprocess import preprocess_mask
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    voxels = preprocess_mask(snakemake.input.mask, snakemake.input.image, snakemake.output[0])
    print(f"{voxels} tumour voxels")
