# Features: pyradiomics on the tumour and peritumoral rings of every timepoint (follow-ups in
# baseline space after registration), one partial table per patient, merged with deltas.
from deltarad.features.handcrafted import resolve_params

# Input functions feature_scans / feature_timepoints live in common.smk.
FEATURE_PARAMS = resolve_params(config["features"]["params"])
# Handcrafted jobs see everything but the deep block: changing deep settings reruns only those.
HANDCRAFTED_SETTINGS = {k: v for k, v in config["features"].items() if k != "deep"}


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
    script:
        "../scripts/features_patient.py"


# Deep features need a trained network (features.deep.method, one of segmentation.methods).
DEEP_METHOD = config["features"]["deep"]["method"]
if DEEP_METHOD and DEEP_METHOD not in NETWORK_METHODS:
    raise WorkflowError(
        f"config key 'features.deep.method': '{DEEP_METHOD}' is not one of the trained "
        f"networks in segmentation.methods {NETWORK_METHODS}"
    )
FEATURE_PARTIALS = ["features/patients/{patient}.parquet"] + (
    ["features/patients/{patient}.deep.parquet"] if DEEP_METHOD else []
)


if DEEP_METHOD:

    rule features_deep:
        input:
            unpack(feature_scans),
            samples=RESULTS / "tables/samples.validated.tsv",
            plan=RESULTS / f"models/segmentation/{DEEP_METHOD}/plan.json",
            checkpoint=RESULTS
            / f"models/segmentation/{DEEP_METHOD}/checkpoint_final.pt",
        output:
            RESULTS / "features/patients/{patient}.deep.parquet",
        log:
            LOGS / "features/{patient}.deep.log",
        conda:
            ENVS / "torch.yaml"
        threads: 1
        resources:
            mem_mb=scaled_mem(3000),
            runtime=20,
        params:
            # Only what deep features depend on: pyradiomics settings must not rerun them.
            settings={
                k: config["features"][k]
                for k in ("rings_mm", "body_threshold", "deep")
            },
            timepoints=feature_timepoints,
        script:
            "../scripts/features_deep.py"


rule features_merge:
    input:
        tables=expand([RESULTS / p for p in FEATURE_PARTIALS], patient=PATIENTS),
        failures=expand(
            RESULTS / "features/patients/{patient}.failures.tsv", patient=PATIENTS
        ),
        excluded=RESULTS / "qc/failures_registration.tsv",
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
    script:
        "../scripts/features_merge.py"
