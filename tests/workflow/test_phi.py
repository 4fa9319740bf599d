"""Zero identifying data downstream of `deltarad ingest-dicom` (issue 10).

The tiny cohort is written as DICOM with fake identifying data (names, birth dates, hospital
numbers, institution, visit dates, UIDs; also in folder names), ingested with the command a
user runs, taken through the workflow into a fresh working directory and reported. Then every
file under that working directory (results tree, .snakemake logs and metadata), the ingest
folder, the report and the console output are searched for every identifying value of the DICOM
headers, as raw bytes and decoded (tests/workflow/phi_search.py). The pseudonyms are searched
for in the same pass: they must be found where the identifiers would be, which shows that the
search reached into each kind of file.

Cost: one workflow run with the cheapest settings (no segmentation network, one rigid
registration level, original-image features, one ring, small models, four figures): about 75 s
of CPU in all.
"""

from __future__ import annotations

import base64
import gzip
import io as stdio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from deltarad import io
from deltarad.dicom.export import export_cohort, fake_person, write_image_series
from deltarad.dicom.pseudonym import pseudonym
from tests.conftest import CONFIGS
from tests.workflow.conftest import snakemake
from tests.workflow.phi_search import Needles, SearchReport, dicom_needles, search_all

KEY = "phi-test-key-0123456789-abcdef"
KEY_ENV = "DELTARAD_PHI_TEST_KEY"
DELTARAD = Path(sys.executable).with_name("deltarad")
CATEGORIES = ("name", "birth_date", "date", "patient_id", "accession", "uid")
# The cheapest run the workflow allows that still writes every kind of output the report shows.
RADIOMICS = {
    "setting": {"binWidth": 25, "minimumROIDimensions": 2, "distances": [1]},
    "imageType": {"Original": {}},
    "featureClass": {"shape": None, "firstorder": None, "glcm": None},
}
SMALL_TREES = {"n_estimators": 5, "min_samples_leaf": 2}
SMALL_BOOSTING = {"n_estimators": 5, "learning_rate": 0.1, "max_depth": 2}


def _workflow_config(tmp: Path, study: Path) -> dict:
    imaging = {"timepoints": ["baseline", "followup", "delta"], "sources": ["pyrad"]}
    return {
        "cohort": {
            "source": "sheets",
            "samples": str(study / "samples.tsv"),
            "clinical": str(study / "clinical.tsv"),
        },
        "study": {"centers": ["C1"], "external_centers": []},
        "registration": {
            "stages": ["rigid"],
            "rigid": {"shrink": [2], "smoothing_mm": [0.0], "iterations": 30},
        },
        "segmentation": {"methods": []},
        "features": {
            "params": str(tmp / "radiomics.yaml"),
            "rings_mm": [[0, 3]],
            "deep": {"method": None},
        },
        "models": {
            "loco": False,
            "bootstrap": 10,
            "feature_sets": [
                {"name": "clinical", "clinical": ["age", "sex", "stage"]},
                {"name": "imaging", **imaging},
            ],
            "response_models": {
                "logistic": {"C": 0.5},
                "random_forest": SMALL_TREES,
                "gradient_boosting": SMALL_BOOSTING,
            },
            "survival_models": {
                "coxnet": {"alpha": 0.2, "l1_ratio": 0.5},
                "random_survival_forest": SMALL_TREES,
                "gradient_boosting": SMALL_BOOSTING,
            },
        },
        "figures": {"include": ["table1", "registration", "roc", "km"]},
    }


@pytest.fixture(scope="module")
def phi_run(labelled_cohort_ro, tmp_path_factory):
    """(needles, search of the outputs, report file, search of the DICOM export)."""
    tmp = tmp_path_factory.mktemp("phi")
    dicom = tmp / "dicom"
    manifest = export_cohort(labelled_cohort_ro, dicom)
    needles = dicom_needles(dicom)
    needles.add(KEY, "key")
    # A stray truncated file next to a study: its error message names the file, inside a folder
    # named after the patient and the visit date (the patient itself still ingests).
    slice_file = Path(manifest["series_folder"].iloc[2]) / "IMG0003.dcm"
    (slice_file.parent.parent / "KO0001.dcm").write_bytes(slice_file.read_bytes()[:300])
    clinical = io.read_tsv(labelled_cohort_ro / "clinical.tsv")
    mrn = dict(zip(manifest["patient_id"], manifest["dicom_patient_id"], strict=False))
    clinical["patient_id"] = clinical["patient_id"].map(mrn)
    # A site's table may carry identifying columns too: ingest redacts what the headers hold.
    people = dict(zip(manifest["dicom_patient_id"], manifest["phi"], strict=False))
    clinical["referrer"] = [people[m].split("|")[7] for m in clinical["patient_id"]]
    io.write_table(clinical, tmp / "site_clinical.tsv")

    study = tmp / "study"
    command = [str(DELTARAD), "ingest-dicom", str(dicom), "--out", str(study), "--roi", "^gtv"]
    command += ["--center", "C1", "--clinical", str(tmp / "site_clinical.tsv")]
    command += ["--key-env", KEY_ENV]
    env = {**os.environ, KEY_ENV: KEY}
    ingest = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert ingest.returncode == 0, ingest.stderr
    assert "corrupt file" in (study / "failures.tsv").read_text()
    assert len(io.read_tsv(study / "samples.tsv")) == 12

    (tmp / "radiomics.yaml").write_text(yaml.safe_dump(RADIOMICS))
    override = tmp / "phi.yaml"
    override.write_text(yaml.safe_dump(_workflow_config(tmp, study)))
    configs = (*CONFIGS, override)
    workdir = tmp / "wf"
    workdir.mkdir()
    run = snakemake(workdir, configs=configs)
    assert run.returncode == 0, run.stderr[-4000:]
    report_file = workdir / "results/report.html"
    report = snakemake(workdir, "--report", str(report_file), configs=configs)
    assert report.returncode == 0, report.stderr[-4000:]

    pseudonyms = {pseudonym(m, KEY.encode()) for m in manifest["dicom_patient_id"]}
    for pid in pseudonyms:
        needles.add(pid, "pseudonym")
    found = search_all([("wf", workdir), ("study", study)], needles)
    for name, proc in (("ingest", ingest), ("snakemake", run), ("report", report)):
        found.search(f"<{name} stdout+stderr>", (proc.stdout + proc.stderr).encode(), needles)
    in_dicom = search_all([("dicom", dicom)], needles)
    return needles, found, report_file, in_dicom


def _where(report: SearchReport, category: str) -> list[str]:
    return [where for where, c, _ in report.hits if c == category]


@pytest.mark.workflow
def test_no_identifying_value_in_results_logs_or_report(phi_run):
    needles, found, report_file, in_dicom = phi_run
    # What was searched for: every kind of identifier, from the headers.
    counts = needles.categories()
    assert all(counts[c] >= 6 for c in CATEGORIES), counts  # 6 patients, 12 visits
    assert counts["institution"] >= 2 and counts["key"] == 1, counts  # one per centre
    assert counts["uid"] > 12 * 24, counts  # every slice's SOP instance UID
    # The same search finds every kind of identifier in the DICOM export itself.
    assert {c for _, c, _ in in_dicom.hits} >= {*CATEGORIES, "institution"}
    # What was searched: the whole tree, and each decoding actually applied.
    assert report_file.stat().st_size > 100_000
    assert found.files > 150 and found.n_bytes > 2_000_000, (found.files, found.n_bytes)
    layers = found.layers
    assert layers["gzip"] >= 24 and layers["nifti-header"] >= 24, layers
    assert layers["parquet"] >= 2 and layers["png-text"] >= 4 and layers["pdf-stream"] >= 4
    assert layers["base64"] >= 10, layers
    assert found.failures == []
    # The pseudonyms are found through each route an identifier could take.
    seen = _where(found, "pseudonym")
    for route in (
        "study/samples.tsv",
        "study/<file names>",
        "wf/results/tables/samples.validated.tsv",
        "wf/results/features/features.parquet!parquet",
        "wf/results/report.html!base64",
        "wf/.snakemake/log/",
        "wf/.snakemake/metadata/",
        "wf/<file names>!base64",
        "<snakemake stdout+stderr>",
    ):
        assert any(w.startswith(route) for w in seen), (route, sorted(set(seen))[:40])
    # And no identifying value anywhere.
    leaks = [hit for hit in found.hits if hit[1] != "pseudonym"]
    assert leaks == [], leaks[:50]


def _small_image():
    import SimpleITK as sitk

    return sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))


def _planted_files(root: Path, needles: Needles) -> dict[str, set[tuple[str, str]]]:
    """Files each hiding identifiers as an output could: file name -> {(decoding, value)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    first, second = fake_person(0, "C1"), fake_person(1, "C1")
    family, given = first.name.split("^")
    uid = sorted(needles.uids)[0]
    date = next(v for v, c in needles.words.items() if c == "date" and "-" in v)
    expect = {}

    (root / "table.tsv").write_text(f"id\tnote\nP1\tscan of {given.lower()}, sent by Henk\n")
    expect["table.tsv"] = {("", given), ("", "HENK")}
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    image.header["descrip"] = f"{family} CT".encode()
    nib.save(image, root / "image.nii.gz")
    expect["image.nii.gz"] = {("!gzip!nifti-header", family)}
    payload = base64.b64encode(f"a\tb\n{first.patient_id}\t1\n".encode()).decode()
    (root / "report.html").write_text(f'<a href="data:text/tsv;base64,{payload}">t</a>')
    expect["report.html"] = {("!base64", first.patient_id)}
    escaped = f"<p>&#{ord(family[0])};{family[1:]} {date.replace('-', '%2D')}</p>"
    (root / "escaped.html").write_text(escaped)
    expect["escaped.html"] = {("!html-unescaped", family), ("!url-unescaped", date)}
    frame = pd.DataFrame({"patient": [second.name], first.institution: [1]})
    frame.to_parquet(root / "table.parquet")
    expect["table.parquet"] = {("!parquet", second.name), ("!parquet", first.institution)}
    fig = plt.figure()
    fig.text(0.5, 0.5, second.name.split("^")[0])
    fig.savefig(root / "figure.pdf")
    fig.savefig(root / "figure.png", metadata={"Author": first.referring})
    plt.close(fig)
    expect["figure.pdf"] = {("!pdf-stream", second.name.split("^")[0])}
    expect["figure.png"] = {("!png-text", first.referring)}
    buffer = stdio.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes/a.txt", f"study {uid}\n")
    (root / "bundle.zip").write_bytes(buffer.getvalue())
    expect["bundle.zip"] = {("!zip:notes/a.txt", uid)}
    noise = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (root / "model.bin").write_bytes(noise + b"\x00" + first.birth_date.encode() + b"\x00" + noise)
    expect["model.bin"] = {("", first.birth_date)}
    accession = f"{first.accession_prefix}0304"
    (root / "run.log.gz").write_bytes(gzip.compress(f"reading {accession}".encode()))
    expect["run.log.gz"] = {("!gzip", accession)}
    name = base64.urlsafe_b64encode(f"/data/{family}/x.tsv".encode()).decode()
    (root / name).write_text("{}")
    expect["<file names>"] = {("!base64", family)}
    # Not identifiers: a name inside a word, date digits inside a longer number.
    (root / "clean.tsv").write_text(f"pipe{given.lower()}s\t0.{first.birth_date}7\n")
    return expect


def test_search_finds_identifiers_however_encoded(tmp_path):
    """The search itself: each planted identifier is found, through its decoding."""
    image = _small_image()
    write_image_series(image, tmp_path / "a", fake_person(0, "C1"), "20210304", "1.2.3.4.5.6")
    write_image_series(image, tmp_path / "b", fake_person(1, "C1"), "20210304", "1.2.3.4.5.7")
    needles = dicom_needles(tmp_path)
    planted = tmp_path / "out"
    planted.mkdir()
    expect = _planted_files(planted, needles)
    found = search_all([("out", planted)], needles)
    assert found.failures == []
    got: dict[str, set[tuple[str, str]]] = {}
    for where, _, value in found.hits:
        name, _, steps = where.removeprefix("out/").partition("!")
        got.setdefault(name, set()).add((f"!{steps}" if steps else "", value))
    for name, wanted in expect.items():
        for step, value in wanted:
            routes = [s for s, v in got.get(name, set()) if v == value]
            assert any(s.replace("?", "").startswith(step) for s in routes), (name, value, routes)
    assert "clean.tsv" not in got, got["clean.tsv"]
    assert set(got) == set(expect), set(got) ^ set(expect)
