"""The `deltarad` command: one subcommand per stage, usable outside Snakemake."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from deltarad import __version__


def _load_config(paths: list[str] | None) -> dict:
    from deltarad.config import load_config

    return load_config(*(paths or []))


def _simulate_one(args: tuple) -> dict:
    from deltarad.synth import simulate_patient

    cfg, patient, out = args
    return simulate_patient(cfg, patient, out)


def cmd_simulate(ns: argparse.Namespace) -> int:
    from deltarad.config import deep_update
    from deltarad.synth import SynthConfig, write_sheets

    config = _load_config(ns.config)
    overrides = {}
    if ns.seed is not None:
        overrides["seed"] = ns.seed
    if ns.patients_per_center is not None:
        overrides["patients_per_center"] = ns.patients_per_center
    cfg = SynthConfig.from_config(deep_update(config["synthetic"], overrides))
    out = Path(ns.out)
    start = time.perf_counter()
    jobs = [(cfg, p, out) for p in cfg.patients()]
    if ns.jobs > 1:
        with ProcessPoolExecutor(ns.jobs) as pool:
            records = list(pool.map(_simulate_one, jobs))
    else:
        records = [_simulate_one(j) for j in jobs]
    write_sheets(records, out)
    print(
        f"simulated {len(records)} patients x 2 timepoints in {len(cfg.centers)} centres "
        f"under {out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def cmd_validate(ns: argparse.Namespace) -> int:
    from deltarad.cohort import CohortError, ValidationSettings, validate_cohort, write_validated

    config = _load_config(ns.config)
    settings = ValidationSettings.from_config(config)
    try:
        samples, clinical = validate_cohort(ns.samples, ns.clinical, settings)
    except CohortError as err:
        print(f"deltarad validate: {err}", file=sys.stderr)
        return 1
    if ns.out_dir:
        out = Path(ns.out_dir)
        write_validated(
            samples, clinical, out / "samples.validated.tsv", out / "clinical.validated.tsv"
        )
    print(
        f"valid: {samples['patient_id'].nunique()} patients, {len(samples)} scans, "
        f"{len(clinical)} clinical rows"
    )
    return 0


def cmd_extract(ns: argparse.Namespace) -> int:
    from deltarad.features import handcrafted as hc
    from deltarad.features.regions import TUMOR, parse_rings, region_name
    from deltarad.layout import resolve_params
    from deltarad.runlog import UserError

    try:
        rings = parse_rings(ns.rings)
        names = [TUMOR] + [region_name(a, b) for a, b in rings]
        extractor = hc.make_extractor(resolve_params(ns.params))
        minimum = {TUMOR: ns.min_tumor_voxels} | {n: ns.min_ring_voxels for n in names[1:]}
        feats, errors = hc.extract_scan(
            ns.image, ns.mask, extractor, rings, ns.body_threshold, minimum, ns.label, ns.image
        )
    except UserError as err:
        print(f"deltarad extract: {err}", file=sys.stderr)
        return 1
    hc.write_scan_table(hc.scan_table(feats, errors, names), ns.out)
    for error in errors.values():
        print(f"deltarad extract: {error}", file=sys.stderr)
    print(
        f"{len(feats)} of {len(names)} regions, {sum(map(len, feats.values()))} values -> {ns.out}"
    )
    return 0


def cmd_register(ns: argparse.Namespace) -> int:
    from deltarad.register import RegistrationSettings, gate, register_scan

    config = _load_config(ns.config)
    settings = RegistrationSettings.from_config(config["registration"])
    out = Path(ns.out)
    record = register_scan(
        "-",
        "moving",
        ns.modality,
        ns.fixed,
        ns.moving,
        ns.moving_mask,
        settings,
        str(out / "registered.nii.gz"),
        str(out / "registered_mask.nii.gz") if ns.moving_mask else None,
        str(out / "transform.tfm"),
        str(out / "qc.json"),
        fixed_mask_path=ns.fixed_mask,
        out_figure=str(out / "qc.png"),
        threads=ns.threads,
    )
    reasons = gate(record, settings)
    status = "FAILED: " + "; ".join(reasons) if reasons else "passed"
    print(
        f"registered in {record['seconds']:.1f} s; Mattes MI {record['metric_before']:.3f} -> "
        f"{record['metric_after']:.3f}; Jacobian {record['jacobian_min']:.2f}.."
        f"{record['jacobian_max']:.2f}; QC gate {status}; outputs in {out}"
    )
    return 3 if reasons else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltarad", description="Longitudinal radiomics: each stage of the workflow."
    )
    parser.add_argument("--version", action="version", version=f"deltarad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="generate the synthetic multi-centre longitudinal cohort")
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s), later ones override (default: built-in defaults)",
    )
    p.add_argument("--out", required=True, help="output folder of the cohort")
    p.add_argument("--seed", type=int, help="override synthetic.seed")
    p.add_argument("--patients-per-center", type=int, help="override synthetic.patients_per_center")
    p.add_argument("--jobs", type=int, default=1, help="patients generated in parallel")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("register", help="register one moving scan onto a fixed scan, with QC")
    p.add_argument("--fixed", required=True, help="fixed image (e.g. the baseline)")
    p.add_argument("--moving", required=True, help="moving image (e.g. a follow-up)")
    p.add_argument("--moving-mask", help="mask on the moving image, propagated to fixed space")
    p.add_argument("--fixed-mask", help="tumour mask on the fixed image (centres the QC picture)")
    p.add_argument(
        "--modality",
        default="CT",
        choices=["CT", "MR", "PET"],
        help="modality (body mask of the B-spline intensity window and the QC measures)",
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s) with a registration block (default: built-in)",
    )
    p.add_argument("--threads", type=int, default=2, help="ITK threads")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("validate", help="check sample sheets, images and masks; list all problems")
    p.add_argument("--samples", required=True, help="samples TSV")
    p.add_argument("--clinical", required=True, help="clinical TSV")
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s) with the validation settings and known centres",
    )
    p.add_argument("--out-dir", help="write samples.validated.tsv and clinical.validated.tsv here")
    p.set_defaults(func=cmd_validate)

    from deltarad.dicom.command import add_ingest_parsers  # ingest-dicom, ingest-nnunet

    add_ingest_parsers(sub)

    p = sub.add_parser("extract", help="pyradiomics features of one scan's tumour and rings")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--mask", required=True, help="tumour mask on the image grid")
    p.add_argument("--params", default="config/radiomics/ct.yaml", help="pyradiomics YAML")
    p.add_argument("--rings", default="0-3,3-6,6-10", help="rings in mm, e.g. 0-3,3-6 ('' = none)")
    p.add_argument("--body-threshold", type=float, help="clip rings to voxels above this value")
    p.add_argument("--label", type=int, default=1, help="tumour label in the mask")
    p.add_argument("--min-tumor-voxels", type=int, default=10, help="smaller tumour: NA row")
    p.add_argument("--min-ring-voxels", type=int, default=10, help="smaller ring: NA row")
    p.add_argument("--out", required=True, help="CSV (one row per region) or .tsv")
    p.set_defaults(func=cmd_extract)
    return parser


def main(argv: list[str] | None = None) -> int:
    from deltarad.config import ConfigError

    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except ConfigError as err:
        print(f"deltarad {ns.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
