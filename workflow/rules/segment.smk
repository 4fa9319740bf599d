# Segmentation: DeltaRad's multi-task longitudinal network (presets) trained on the training
# centres, masks and outcome predicted for every patient, QC against the reference masks.
from deltarad.layout import nnunet_dataset_name, nnunet_model_folder
from deltarad.segment.plan import NNUNET, preset_for, wants_gpu
from deltarad.runlog import UserError

SEGMENT = config["segmentation"]
NETWORK_METHODS = [m for m in SEGMENT["methods"] if m != NNUNET]
try:
    for _method in NETWORK_METHODS:
        preset_for(_method, SEGMENT)
except UserError as _err:
    raise WorkflowError(str(_err))
# A GPU is requested (SLURM gres) only when CUDA is asked for or seen here.
SEGMENT_GPU = int(wants_gpu(SEGMENT["device"]))
# Methods with a segmentation head (masks) and with outcome heads (network_predictions.tsv).
MASK_METHODS = [
    m for m in SEGMENT["methods"] if m == NNUNET or preset_for(m, SEGMENT).segments
]
OUTCOME_METHODS = [m for m in NETWORK_METHODS if preset_for(m, SEGMENT).outcome]
if FEATURE_MASK_METHOD and FEATURE_MASK_METHOD not in MASK_METHODS:
    raise WorkflowError(
        f"config key 'segmentation.masks' is predicted, but the feature method "
        f"'{FEATURE_MASK_METHOD}' is not one of the methods that predict masks {MASK_METHODS} "
        "(segmentation.methods / segmentation.feature_method)"
    )
# What `all` asks of this stage (nothing when no method is configured).
SEGMENTATION_TARGETS = (
    [RESULTS / "tables/segmentation_qc.tsv"] if MASK_METHODS else []
) + ([RESULTS / "tables/network_predictions.tsv"] if OUTCOME_METHODS else [])
# Wildcard patterns (matching nothing when empty).
NETWORK_METHOD_REGEX = "|".join(NETWORK_METHODS) or "(?!)"
MASK_NETWORK_REGEX = "|".join(m for m in MASK_METHODS if m != NNUNET) or "(?!)"


rule segment_train:
    input:
        unpack(network_training_inputs),
        samples=RESULTS / "tables/samples.validated.tsv",
        clinical=clinical_sheet(),
        # Patients the registration QC gate dropped are not trained on.
        excluded=RESULTS / "qc/failures_registration.tsv",
    output:
        plan=RESULTS / "models/segmentation/{method}/plan.json",
        checkpoint=RESULTS / "models/segmentation/{method}/checkpoint_final.pt",
        history=report(
            RESULTS / "models/segmentation/{method}/training_log.tsv",
            caption="../report/segmentation_training.rst",
            category="3. Segmentation",
        ),
        splits=RESULTS / "models/segmentation/{method}/splits.json",
    log:
        LOGS / "segment/{method}/train.log",
    benchmark:
        RESULTS / "benchmarks/segment/{method}_train.tsv"
    wildcard_constraints:
        method=NETWORK_METHOD_REGEX,
    conda:
        ENVS / "torch.yaml"
    threads: 2
    resources:
        mem_mb=scaled_mem(6000),
        runtime=240,
        gpu=SEGMENT_GPU,
    params:
        settings=training_settings,
        external=config["study"]["external_centers"],
        results=RESULTS,
        # The input channels besides the reference: changing them retrains.
        channels=EXTRA_CHANNELS,
    script:
        "../scripts/segment_train.py"


rule segment_predict:
    input:
        unpack(network_prediction_inputs),
        samples=RESULTS / "tables/samples.validated.tsv",
    output:
        mask=RESULTS / "segmentation/{method}/{patient}/{timepoint}.nii.gz",
    log:
        LOGS / "segment/{method}/{patient}/{timepoint}.log",
    wildcard_constraints:
        method=MASK_NETWORK_REGEX,
    conda:
        ENVS / "torch.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(3000),
        runtime=30,
        gpu=SEGMENT_GPU,
    params:
        overlap=SEGMENT["overlap"],
        results=RESULTS,
        channels=EXTRA_CHANNELS,
    script:
        "../scripts/segment_predict.py"


rule segmentation_qc:
    input:
        unpack(segmentation_qc_inputs),
    output:
        report(
            RESULTS / "tables/segmentation_qc.tsv",
            caption="../report/segmentation_qc.rst",
            category="3. Segmentation",
        ),
    log:
        LOGS / "segment/qc.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(2000),
        runtime=20,
    params:
        mask_label=config["validation"]["mask_label"],
    script:
        "../scripts/segmentation_qc.py"


rule network_predictions:
    input:
        unpack(network_outcome_inputs),
        samples=RESULTS / "tables/samples.validated.tsv",
    output:
        report(
            RESULTS / "tables/network_predictions.tsv",
            caption="../report/network_predictions.rst",
            category="3. Segmentation",
        ),
    log:
        LOGS / "segment/network_predictions.log",
    conda:
        ENVS / "torch.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(3000),
        runtime=60,
        gpu=SEGMENT_GPU,
    params:
        methods=OUTCOME_METHODS,
        results=RESULTS,
        mask_label=config["validation"]["mask_label"],
        channels=EXTRA_CHANNELS,
    script:
        "../scripts/network_predictions.py"


# ---- the nnU-Net v2 backend (method `nnunet`) ----
NNUNET_CFG = SEGMENT["nnunet"]
NNUNET_ROOT = RESULTS / "models/segmentation/nnunet"
NNUNET_DATASET = nnunet_dataset_name(
    NNUNET_CFG["dataset_id"], NNUNET_CFG["dataset_name"]
)
NNUNET_MODEL = (
    Path(NNUNET_CFG["pretrained"])
    if NNUNET_CFG["pretrained"]
    else nnunet_model_folder(
        NNUNET_ROOT,
        NNUNET_CFG["dataset_id"],
        NNUNET_CFG["dataset_name"],
        NNUNET_CFG["configuration"],
        NNUNET_CFG["trainer"],
    )
)
NNUNET_CHECKPOINTS = [
    NNUNET_MODEL / f"fold_{fold}" / NNUNET_CFG["checkpoint"]
    for fold in NNUNET_CFG["folds"]
]

if NNUNET in SEGMENT["methods"] and not NNUNET_CFG["pretrained"]:

    rule nnunet_export:
        input:
            unpack(network_training_inputs),
            samples=RESULTS / "tables/samples.validated.tsv",
            # Patients the registration QC gate dropped are not trained on.
            excluded=RESULTS / "qc/failures_registration.tsv",
        output:
            dataset_json=NNUNET_ROOT / "raw" / NNUNET_DATASET / "dataset.json",
            splits=NNUNET_ROOT / "preprocessed" / NNUNET_DATASET / "splits_final.json",
        log:
            LOGS / "segment/nnunet/export.log",
        conda:
            ENVS / "torch.yaml"
        threads: 1
        resources:
            mem_mb=scaled_mem(2000),
            runtime=30,
        params:
            settings=NNUNET_CFG,
            root=NNUNET_ROOT,
            channel_name=training_modality,
            seed=SEGMENT["seed"],
            mask_label=config["validation"]["mask_label"],
            # nnU-Net's input channels 1, 2, ... (0 is the reference): changing them retrains.
            channels=EXTRA_CHANNELS,
        script:
            "../scripts/nnunet_export.py"

    rule nnunet_plan:
        input:
            dataset_json=rules.nnunet_export.output.dataset_json,
            splits=rules.nnunet_export.output.splits,
        output:
            plans=NNUNET_ROOT / "nnUNetPlans.json",
            fingerprint=NNUNET_ROOT / "dataset_fingerprint.json",
        log:
            LOGS / "segment/nnunet/plan.log",
        benchmark:
            RESULTS / "benchmarks/segment/nnunet_plan.tsv"
        conda:
            ENVS / "torch.yaml"
        threads: 2
        resources:
            mem_mb=scaled_mem(6000),
            runtime=120,
        params:
            settings=NNUNET_CFG,
            root=NNUNET_ROOT,
        script:
            "../scripts/nnunet_plan.py"

    rule nnunet_train:
        input:
            plans=rules.nnunet_plan.output.plans,
        output:
            NNUNET_MODEL / "fold_{fold}" / NNUNET_CFG["checkpoint"],
        log:
            LOGS / "segment/nnunet/train_fold_{fold}.log",
        benchmark:
            RESULTS / "benchmarks/segment/nnunet_train_fold_{fold}.tsv"
        conda:
            ENVS / "torch.yaml"
        threads: 2
        resources:
            mem_mb=scaled_mem(8000),
            runtime=1440,
            gpu=SEGMENT_GPU,
        params:
            settings=NNUNET_CFG,
            root=NNUNET_ROOT,
            seed=SEGMENT["seed"],
        script:
            "../scripts/nnunet_train.py"


if NNUNET in SEGMENT["methods"]:

    rule nnunet_predict:
        input:
            unpack(nnunet_prediction_inputs),
            checkpoints=NNUNET_CHECKPOINTS,
        output:
            **{
                f"{pid}__{tp}": RESULTS / f"segmentation/nnunet/{pid}/{tp}.nii.gz"
                for pid, tp in PLANNED[["patient_id", "timepoint"]].itertuples(
                    index=False
                )
            },
        log:
            LOGS / "segment/nnunet/predict.log",
        benchmark:
            RESULTS / "benchmarks/segment/nnunet_predict.tsv"
        conda:
            ENVS / "torch.yaml"
        threads: 2
        resources:
            mem_mb=scaled_mem(6000),
            runtime=240,
            gpu=SEGMENT_GPU,
        params:
            settings=NNUNET_CFG,
            model_folder=NNUNET_MODEL,
            channels=EXTRA_CHANNELS,
        script:
            "../scripts/nnunet_predict.py"
