# Preprocessing: dataset fingerprint, then per scan resampling + normalisation.


rule fingerprint:
    input:
        samples=RESULTS / "tables/samples.validated.tsv",
        scans=validated_scan_files,
    output:
        RESULTS / "preprocess/fingerprint.json",
    log:
        LOGS / "preprocess/fingerprint.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(4000),
        runtime=30,
    script:
        "../scripts/fingerprint.py"


rule preprocess:
    input:
        unpack(preprocess_inputs),
    output:
        image=RESULTS / "preprocessed/{patient}/{timepoint}.nii.gz",
        record=RESULTS / "preprocessed/{patient}/{timepoint}.json",
    log:
        LOGS / "preprocess/{patient}/{timepoint}.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(3000),
        runtime=20,
    params:
        modality=scan_modality,
        settings=config["preprocess"],
    script:
        "../scripts/preprocess.py"


# Only scans with a drawn mask have one on the preprocessed grid; the others get predicted masks.
rule preprocess_mask:
    input:
        mask=drawn_mask,
        image=RESULTS / "preprocessed/{patient}/{timepoint}.nii.gz",
    output:
        RESULTS / "preprocessed/{patient}/{timepoint}_mask.nii.gz",
    log:
        LOGS / "preprocess/{patient}/{timepoint}_mask.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(2000),
        runtime=10,
    script:
        "../scripts/preprocess_mask.py"


# Another channel of a timepoint (PET beside CT, ADC beside T2), onto the baseline grid: at
# baseline as it lies (co-registered with the reference channel), at a later timepoint through
# the reference channel's registration (register.smk).
rule channel_image:
    input:
        unpack(channel_inputs),
    output:
        image=RESULTS / "{stage}/{patient}/{timepoint}__{channel}.nii.gz",
        record=RESULTS / "{stage}/{patient}/{timepoint}__{channel}.json",
    log:
        LOGS / "{stage}/{patient}/{timepoint}__{channel}.log",
    wildcard_constraints:
        stage="preprocessed|registered",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(3000),
        runtime=20,
    params:
        modality=scan_modality,
        # The grid is the baseline's: only the normalisation settings apply.
        settings={**config["preprocess"], "spacing": None},
    script:
        "../scripts/channel_image.py"
