"""The `ingest-dicom` and `ingest-nnunet` subcommands, kept here so that cli.py only wires them.

Imports of pydicom and highdicom happen when a command runs, not when the parser is built, so
`deltarad --help` stays fast.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from deltarad.runlog import UserError

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def _label(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not [A-Za-z0-9_-]+")
    return value


def _report(name: str, samples, failures, out: Path) -> int:
    """Print what was ingested and what was skipped; non-zero only when nothing ingested."""
    for row in failures.to_dict("records"):
        who, stage = row["patient_id"], row["stage"]
        print(f"{name}: skipped: patient {who}, {stage}: {row['error']}", file=sys.stderr)
    n = samples["patient_id"].nunique()
    print(
        f"{name}: {n} patient(s), {len(samples)} scan(s) written to {out}/samples.tsv; "
        f"{len(failures)} problem(s) listed in {out}/failures.tsv"
    )
    if n == 0:
        print(f"{name}: nothing could be ingested", file=sys.stderr)
        return 1
    return 0


def _roi(ns: argparse.Namespace) -> str | None:
    """--roi, else the config's ingest.roi_regex (--config files, merged), else None."""
    if ns.roi or not ns.config:
        return ns.roi
    from deltarad.config import load_config

    return load_config(*ns.config)["ingest"]["roi_regex"]


def cmd_ingest_dicom(ns: argparse.Namespace) -> int:
    from deltarad.dicom.ingest import IngestOptions, ingest_dicom
    from deltarad.dicom.pseudonym import load_key

    try:
        key = load_key(ns.key_env, ns.key_file)
        roi = _roi(ns)
        options = IngestOptions(
            roi_regex=roi,
            center=ns.center,
            mask_source=ns.mask_source,
            prefix=ns.prefix,
            timepoints=ns.timepoints,
            clinical=ns.clinical,
        )
        if roi:
            re.compile(roi)
        result = ingest_dicom(Path(ns.root), Path(ns.out), key, options)
    except (UserError, re.error) as err:
        print(f"deltarad ingest-dicom: {err}", file=sys.stderr)
        return 2
    code = _report("deltarad ingest-dicom", result.samples, result.failures, Path(ns.out))
    return 1 if ns.strict and len(result.failures) else code


def cmd_ingest_nnunet(ns: argparse.Namespace) -> int:
    from deltarad.dicom.nnunet import ingest_nnunet

    try:
        samples, failures = ingest_nnunet(
            Path(ns.dataset), Path(ns.out), _roi(ns), ns.channel, ns.cases, ns.center, ns.modality
        )
    except (UserError, re.error) as err:
        print(f"deltarad ingest-nnunet: {err}", file=sys.stderr)
        return 2
    code = _report("deltarad ingest-nnunet", samples, failures, Path(ns.out))
    return 1 if ns.strict and len(failures) else code


def add_ingest_parsers(sub: argparse._SubParsersAction) -> None:
    """Add both subcommands to the `deltarad` parser."""
    from deltarad.dicom.pseudonym import DEFAULT_KEY_ENV

    p = sub.add_parser(
        "ingest-dicom",
        help="DICOM folder tree (CT/MR/PET, RTSTRUCT, DICOM-SEG) -> pseudonymised NIfTI + sheets",
    )
    p.add_argument("root", help="folder searched recursively for DICOM files")
    p.add_argument("--out", required=True, help="output folder (sheets, images, masks, logs)")
    p.add_argument(
        "--key-env",
        default=DEFAULT_KEY_ENV,
        metavar="VAR",
        help=f"environment variable holding the pseudonymisation key (default {DEFAULT_KEY_ENV})",
    )
    p.add_argument("--key-file", type=Path, help="file holding the key (instead of --key-env)")
    p.add_argument("--roi", metavar="REGEX", help="tumour ROI/segment name (case-insensitive)")
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s); ingest.roi_regex is used when --roi is not given",
    )
    p.add_argument(
        "--mask-source",
        choices=("auto", "seg", "rtstruct"),
        default="auto",
        help="where masks come from; auto prefers DICOM-SEG over RTSTRUCT",
    )
    p.add_argument(
        "--timepoints", type=Path, metavar="TSV", help="timepoint (and channel) table (see docs)"
    )
    p.add_argument("--clinical", type=Path, metavar="TSV", help="clinical table by DICOM PatientID")
    p.add_argument("--center", type=_label, default="site1", help="centre label of this root")
    p.add_argument("--prefix", type=_label, default="P", help="prefix of the pseudonyms")
    p.add_argument("--strict", action="store_true", help="exit 1 if anything was skipped")
    p.set_defaults(func=cmd_ingest_dicom)

    p = sub.add_parser("ingest-nnunet", help="nnU-Net raw dataset (imagesTr/labelsTr) -> sheets")
    p.add_argument("dataset", help="Dataset folder holding dataset.json, imagesTr, labelsTr")
    p.add_argument("--out", required=True, help="output folder (samples.tsv, masks)")
    p.add_argument("--roi", metavar="REGEX", help="tumour label name in dataset.json")
    p.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s); ingest.roi_regex is used when --roi is not given",
    )
    p.add_argument("--channel", type=int, default=0, help="image channel to use (default 0)")
    p.add_argument("--cases", type=Path, metavar="TSV", help="case, patient_id, timepoint, days")
    p.add_argument("--center", type=_label, default="site1", help="centre label")
    p.add_argument(
        "--modality",
        choices=("CT", "MR", "PET"),
        help="the channel's modality (default: from its name)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if any case was skipped")
    p.set_defaults(func=cmd_ingest_nnunet)
