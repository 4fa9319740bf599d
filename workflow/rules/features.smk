# Features: pyradiomics on the tumour and peritumoral rings of every timepoint (follow-ups in
# baseline space after registration), one partial table per patient, merged with deltas.
from deltarad.features.handcrafted import resolve_params

# Input functions feature_scans / feature_timepoints live in common.smk.
FEATURE_PARAMS = resolve_params(config["features"]["params"])


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
        settings=config["features"],
        timepoints=feature_timepoints,
    script:
        "../scripts/features_patient.py"


rule features_merge:
    input:
        tables=expand(RESULTS / "features/patients/{patient}.parquet", patient=PATIENTS),
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
