# Features: pyradiomics on the tumour and peritumoral rings of every timepoint (follow-ups in
# baseline space after registration), one partial table per patient, merged with deltas.
from deltarad.layout import resolve_params

# Input functions feature_scans / feature_timepoints live in common.smk.
FEATURE_PARAMS = resolve_params(config["features"]["params"])
# The tumour label of the drawn masks (predicted masks are 0/1; params `masks` says which is which).
FEATURE_MASK_LABEL = config["validation"]["mask_label"]
# Handcrafted jobs see everything but the deep block (changing deep settings reruns only those)
# and the merge's delta_previous.
HANDCRAFTED_SETTINGS = {
    **{
        k: v
        for k, v in config["features"].items()
        if k not in ("deep", "delta_previous")
    },
    "mask_label": FEATURE_MASK_LABEL,
    # The body rings are clipped to: the one definition of every stage (deltarad.body).
    "body_threshold": config["preprocess"]["body_threshold"],
}


rule features_patient:
    input:
        unpack(feature_scans),
        samples=RESULTS / "tables/samples.validated.tsv",
        params=FEATURE_PARAMS,
    output:
        table=RESULTS / "features/patients/{patient}.parquet",
        failures=RESULTS / "features/patients/{patient}.failures.tsv",
    log:
        LOGS / "features/{patient}.log",
    benchmark:
        RESULTS / "benchmarks/features/{patient}.tsv"
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(3000),
        runtime=30,
    params:
        settings=HANDCRAFTED_SETTINGS,
        timepoints=feature_timepoints,
        masks=feature_mask_sources,
        channels=EXTRA_CHANNELS,
    script:
        "../scripts/features_patient.py"


# Deep features need a trained network (features.deep.method, one of segmentation.methods:
# a preset, or nnunet, whose model may be the pretrained one). Input function: deep_model_inputs.
DEEP_METHOD = config["features"]["deep"]["method"]
DEEP_METHODS = NETWORK_METHODS + [m for m in SEGMENT["methods"] if m == NNUNET]
if DEEP_METHOD and DEEP_METHOD not in DEEP_METHODS:
    raise WorkflowError(
        f"config key 'features.deep.method': '{DEEP_METHOD}' is not one of the trained "
        f"networks in segmentation.methods {DEEP_METHODS}"
    )
DEEP_SETTINGS = {
    # Only what deep features depend on: pyradiomics settings must not rerun them.
    **{k: config["features"][k] for k in ("rings_mm", "deep")},
    "mask_label": FEATURE_MASK_LABEL,
    "body_threshold": config["preprocess"]["body_threshold"],
}
if DEEP_METHOD == NNUNET:
    # Features come from one fold (folds' channels do not correspond).
    DEEP_SETTINGS["nnunet"] = {
        "fold": NNUNET_CFG["folds"][0],
        "checkpoint": NNUNET_CFG["checkpoint"],
    }
DEEP_MODEL_FOLDER = (
    NNUNET_MODEL
    if DEEP_METHOD == NNUNET
    else RESULTS / f"models/segmentation/{DEEP_METHOD}"
)
# nnU-Net's default encoder (32-320 channels, 128³ windows) peaked at 2.2 GB RSS on a
# 160x160x128 scan (2.6 GB with level 0) and took ~9 s per window on 2 CPU cores.
DEEP_MEM_MB, DEEP_RUNTIME = (6000, 60) if DEEP_METHOD == NNUNET else (3000, 20)
FEATURE_PARTIALS = ["features/patients/{patient}.parquet"] + (
    ["features/patients/{patient}.deep.parquet"] if DEEP_METHOD else []
)


if DEEP_METHOD:

    rule features_deep:
        input:
            unpack(feature_scans),
            unpack(deep_model_inputs),
            samples=RESULTS / "tables/samples.validated.tsv",
        output:
            RESULTS / "features/patients/{patient}.deep.parquet",
        log:
            LOGS / "features/{patient}.deep.log",
        conda:
            ENVS / "torch.yaml"
        threads: 1
        resources:
            mem_mb=scaled_mem(DEEP_MEM_MB),
            runtime=DEEP_RUNTIME,
        params:
            settings=DEEP_SETTINGS,
            model_folder=DEEP_MODEL_FOLDER,
            timepoints=feature_timepoints,
            masks=feature_mask_sources,
            channels=EXTRA_CHANNELS,
        script:
            "../scripts/features_deep.py"


rule features_merge:
    input:
        tables=expand([RESULTS / p for p in FEATURE_PARTIALS], patient=PATIENTS),
        failures=expand(
            RESULTS / "features/patients/{patient}.failures.tsv", patient=PATIENTS
        ),
        excluded=RESULTS / "qc/failures_registration.tsv",
        samples=RESULTS / "tables/samples.validated.tsv",
    output:
        table=RESULTS / "features/features.parquet",
        failures=RESULTS / "qc/failures_features.tsv",
    log:
        LOGS / "features/merge.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(4000),
        runtime=10,
    params:
        reldelta=config["features"]["reldelta"],
        previous=config["features"]["delta_previous"],
    script:
        "../scripts/features_merge.py"
