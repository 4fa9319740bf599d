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
    from deltarad.config import deep_update, load_config
    from deltarad.synth import SynthConfig, write_sheets

    config = _load_config(ns.config)
    overrides = {}
    if ns.seed is not None:
        overrides["seed"] = ns.seed
    if ns.patients_per_center is not None:
        overrides["patients_per_center"] = ns.patients_per_center
    if overrides:
        config = load_config() | {"synthetic": deep_update(config["synthetic"], overrides)}
    cfg = SynthConfig.from_config(config["synthetic"])
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
