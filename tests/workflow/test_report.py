"""Figures target, restyling and the HTML report on the tiny cohort, checked in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from deltarad.report import find_chromium, inspect_report
from tests.workflow.conftest import RUN_CONFIGS, snakemake

pytestmark = pytest.mark.workflow
FIGURE_JOBS = re.compile(r"^(figure_\w+|table1|figures)$")


def planned_jobs(output: str) -> dict[str, int]:
    """Job name -> count from the 'Job stats' table of a (dry) run."""
    table = output.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        jobs[parts[0]] = int(parts[1])
    return {k: v for k, v in jobs.items() if k != "total"}


def test_figures_are_png_and_pdf(finished_run):
    figures = finished_run / "results/figures"
    expected = {"table1", "registration", "dice", "overlays", "roc", "km", "performance"}
    pngs = {p.stem for p in figures.glob("*.png")}
    assert expected <= pngs
    for stem in pngs:
        assert (figures / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
        image = imread(figures / f"{stem}.png")
        # At least one ~60 mm panel at 300 dpi (a one-panel figure is not page-wide).
        assert image.shape[1] > 600 and image.std() > 0.01, stem
    table1 = (finished_run / "results/tables/table1.tsv").read_text().splitlines()
    assert table1[0].split("\t") == ["characteristic", "C1", "C2", "All"]
    assert table1[1].split("\t") == ["Patients, n", "3", "3", "6"]


@pytest.mark.skipif(
    find_chromium() is None, reason="chromium not installed (apt-get install chromium)"
)
def test_report_opens_in_chromium_and_shows_every_figure(finished_run, tmp_path):
    report = finished_run / "results/report.html"
    result = snakemake(finished_run, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    page = inspect_report(report, screenshot=tmp_path / "report.png")
    assert page.errors == [], page.errors
    assert page.console == [], page.console
    shot = imread(page.screenshot)
    assert shot.shape[1] == 1400 and shot.std() > 0.01
    assert page.categories[:3] == ["1. Cohort", "2. Registration", "3. Segmentation"]
    figures = sorted(p.name for p in (finished_run / "results/figures").glob("*.png"))
    not_shown = [name for name in figures if not page.shown(name)]
    assert not not_shown, f"figures not displayed by the report: {not_shown}\n{page.items}"
    listed = {Path(item["file"]).name for item in page.items}
    tables = {"table1.tsv", "samples.validated.tsv", "registration_qc.tsv", "failures.tsv"}
    assert tables <= listed, listed


def test_restyle_reruns_only_figure_jobs(finished_run, tmp_path):
    """`snakemake figures` after a finished run, with a new style: only figure jobs run.
    The shared run is put back to the default style at the end."""
    style = tmp_path / "style.yaml"
    style.write_text(yaml.safe_dump({"figures": {"style": {"font_size": 9, "width_mm": 88}}}))
    configs = (*RUN_CONFIGS, style)
    # The default target too: nothing upstream depends on the figures block.
    plan = snakemake(finished_run, "-n", configs=configs)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = planned_jobs(plan.stdout + plan.stderr)
    assert jobs and all(FIGURE_JOBS.match(j) or j == "all" for j in jobs), jobs
    before = (finished_run / "results/figures/table1.png").stat().st_mtime_ns
    result = snakemake(finished_run, "figures", configs=configs)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = planned_jobs(result.stdout + result.stderr)
    assert ran and all(FIGURE_JOBS.match(j) for j in ran), ran
    assert (finished_run / "results/figures/table1.png").stat().st_mtime_ns != before
    narrow = imread(finished_run / "results/figures/registration.png")
    assert narrow.shape[1] < 88 / 25.4 * 300 * 1.05  # the new width reached the figure
    again = snakemake(finished_run, "-n", "figures", configs=configs)
    assert "Nothing to be done" in again.stdout + again.stderr  # cached until the next change
    assert snakemake(finished_run, "figures").returncode == 0  # back to the default style
