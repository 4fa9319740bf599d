"""Figure functions on small seeded synthetic tables shaped like the models stage's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from deltarad import io
from deltarad.figures import build, common, models, response, survival
from deltarad.figures.style import Style
from deltarad.figures.table1 import cohort_table
from deltarad.runlog import UserError
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def default_rcparams():
    """Each figure test starts from matplotlib's defaults, as a workflow job does (a fresh
    process): rcParams changed by other tests of the session must not move layouts (nnU-Net's
    progress plot calls seaborn.set(font_scale=2.5), which enlarged every font)."""
    import matplotlib as mpl

    with mpl.rc_context():
        mpl.rcdefaults()
        yield


CENTERS = ["C1", "C2", "C3", "C4"]
EVALUATIONS = ["nested_cv", "external:C4", "loco:C1"]
PAIRS = [("logreg", "clinical"), ("logreg", "delta"), ("rf", "tumor+ring")]
NETWORKS = ["rpnet", "mtms", "multidl", "seg_only", "outcome_only"]


def make_predictions(seed: int = 0, n: int = 40) -> pd.DataFrame:
    """Response and survival predictions: informative scores, risk groups at the median."""
    rng = np.random.default_rng(seed)
    rows = []
    for evaluation in EVALUATIONS:
        latent = rng.normal(size=n)
        response_ = (latent + rng.normal(scale=1.0, size=n) > 0).astype(int)
        time = rng.exponential(600 * np.exp(-0.8 * latent))
        censor = rng.uniform(200, 1500, n)
        event = (time <= censor).astype(int)
        time = np.minimum(time, censor).round(1)
        for k, (model, fset) in enumerate([*PAIRS, ("oracle", "oracle")]):
            noisy = latent + rng.normal(scale=0.6 + 0.5 * k, size=n)
            # The oracle's score is the true latent itself (not a probability).
            prob = latent if model == "oracle" else 1 / (1 + np.exp(-noisy))
            cut = float(np.median(noisy))
            for endpoint, score in (("response", prob), ("survival", noisy)):
                for i in range(n):
                    rows.append(
                        {
                            "patient_id": f"P{i:03d}",
                            "endpoint": endpoint,
                            "model": model,
                            "feature_set": fset,
                            "evaluation": evaluation,
                            "score": score[i],
                            "center": CENTERS[i % 4],
                            "fold": i % 5,
                            "response": response_[i],
                            "time": time[i],
                            "event": event[i],
                            "risk_group": "NA"
                            if endpoint == "response"
                            else ("high" if score[i] > cut else "low"),
                            "threshold": 0.5 if endpoint == "response" else cut,
                        }
                    )
    return pd.DataFrame(rows)


def make_metrics(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    fsets = [*PAIRS, ("oracle", "oracle"), *[("network", f"network:{m}") for m in NETWORKS]]
    for evaluation in EVALUATIONS:
        for model, fset in fsets:
            for endpoint, metric in (
                ("response", "auc"),
                ("survival", "c_index"),
                ("response", "brier"),
                ("survival", "hazard_ratio"),
                ("survival", "logrank_p"),
            ):
                value = {
                    "brier": rng.uniform(0.15, 0.25),
                    "hazard_ratio": rng.uniform(1, 3),
                    "logrank_p": rng.uniform(0, 0.1),
                }.get(metric, rng.uniform(0.6, 0.85))
                rows.append(
                    {
                        "endpoint": endpoint,
                        "model": model,
                        "feature_set": fset,
                        "evaluation": evaluation,
                        "metric": metric,
                        "value": value,
                        "ci_low": value - 0.08,
                        "ci_high": min(value + 0.08, 1.0),
                        "n": 40,
                    }
                )
    return pd.DataFrame(rows)


def make_td_auc() -> pd.DataFrame:
    rows = [
        {
            "endpoint": "survival",
            "model": m,
            "feature_set": f,
            "evaluation": e,
            "time": t,
            "auc": 0.7 + 0.05 * np.sin(t / 300 + k),
        }
        for e in EVALUATIONS
        for k, (m, f) in enumerate(PAIRS)
        for t in range(100, 1100, 100)
    ]
    return pd.DataFrame(rows)


def make_hazard_ratios() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for model, fset in PAIRS[:2]:
        for j in range(8):
            hr = float(np.exp(rng.normal(0, 0.5)))
            rows.append(
                {
                    "feature_set": fset,
                    "model": model,
                    "feature": f"delta__CT__ring3to6mm__pyrad__original_glcm_F{j}",
                    "hr": hr,
                    "ci_low": hr * 0.7,
                    "ci_high": hr * 1.4,
                    "p": rng.uniform(0, 0.3),
                }
            )
    return pd.DataFrame(rows)


def make_coefficients() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        [
            {
                "endpoint": e,
                "model": m,
                "feature_set": f,
                "feature": f"baseline__CT__tumor__pyrad__original_firstorder_F{j}",
                "coefficient": rng.normal(),
            }
            for e in ("response", "survival")
            for m, f in PAIRS
            for j in range(25)
        ]
    )


def make_harmonization() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    check, emb = [], []
    for c_i, c in enumerate(CENTERS):
        for stage, shift in (("before", 1.0), ("after", 0.05)):
            for j in range(5):
                check.append(
                    {
                        "feature": f"baseline__CT__tumor__pyrad__original_firstorder_F{j}",
                        "center": c,
                        "stage": stage,
                        "mean": 10 + shift * c_i * (j + 1),
                        "sd": 1.0 + 0.1 * j,
                    }
                )
            for p in range(15):
                emb.append(
                    {
                        "patient_id": f"{c}-{p:03d}",
                        "center": c,
                        "stage": stage,
                        "pc1": rng.normal(shift * 3 * c_i),
                        "pc2": rng.normal(),
                    }
                )
    return pd.DataFrame(check), pd.DataFrame(emb)


def make_segmentation_qc() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(4)
    samples = pd.DataFrame(
        [
            {"patient_id": f"{c}-{p:03d}", "center": c, "timepoint": "baseline"}
            for c in CENTERS
            for p in range(6)
        ]
    )
    qc = pd.DataFrame(
        [
            {
                "patient_id": pid,
                "timepoint": tp,
                "method": m,
                "dice": rng.uniform(0.6, 0.95),
                "hd95_mm": rng.uniform(1, 8),
            }
            for pid in samples["patient_id"]
            for tp in ("baseline", "followup")
            for m in ("nnunet", "rpnet")
        ]
    )
    return qc, samples


def png_ok(path: Path, min_px: int = 500) -> None:
    """A real raster image of publication width (not an empty file)."""
    img = imread(path)
    assert img.shape[1] >= min_px and img.std() > 0.01, path
    assert path.with_suffix(".pdf").read_bytes().startswith(b"%PDF")


@pytest.fixture(scope="module")
def style() -> Style:
    return Style.from_config({"dpi": 100})


def test_style_from_config_checks_keys_and_sets_rcparams():
    s = Style.from_config({"font_size": 11, "palette": ["#111111", "#222222"], "width_mm": 90})
    assert s.rc()["font.size"] == 11 and s.color(3) == "#222222"
    assert s.size(0.5) == pytest.approx((90 / 25.4, 45 / 25.4))
    with pytest.raises(UserError, match="unknown key"):
        Style.from_config({"font": 3})


def test_response_figures(tmp_path, style):
    preds, metrics = make_predictions(), make_metrics()
    for fn in (response.roc_figure, response.calibration_figure, response.decision_curve_figure):
        out = tmp_path / f"{fn.__name__}.png"
        fn(preds, metrics, style, out, out.with_suffix(".pdf"))
        png_ok(out)


def test_ranking_uses_nested_cv_and_legend_has_ci():
    preds, metrics = make_predictions(), make_metrics()
    ext = preds[(preds["endpoint"] == "response") & (preds["evaluation"] == "external:C4")]
    ranked = common.ranked_models(metrics, "response", "external:C4", ext)
    cv = metrics[(metrics["evaluation"] == "nested_cv") & (metrics["metric"] == "auc")]
    cv = cv[cv["feature_set"].isin([f for _, f in PAIRS])].sort_values("value", ascending=False)
    assert ranked == list(zip(cv["model"], cv["feature_set"], strict=True))  # oracle left out
    row = common.metric_row(metrics, "response", "rf", "tumor+ring", "external:C4", "auc")
    assert common.with_ci(row, "AUC") == (
        f"AUC {row['value']:.2f} ({row['ci_low']:.2f}–{row['ci_high']:.2f})"
    )


def test_net_benefit_matches_hand_computation():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.7])
    # t = 0.5: treated 0.9, 0.6, 0.7 -> TP 2, FP 1; 2/5 - 1/5 * 0.5/0.5 = 0.2
    assert response.net_benefit(y, p, np.array([0.5]))[0] == pytest.approx(0.2)
    bins = response.calibration_bins(y.astype(float), p, 5)
    assert bins["n"].sum() == 5 and bins["observed"].tolist() == [0, 1, 0, 1, 1]


def test_survival_figures(tmp_path, style):
    preds, metrics = make_predictions(), make_metrics()
    survival.km_figure(preds, metrics, style, tmp_path / "km.png", tmp_path / "km.pdf")
    survival.td_auc_figure(make_td_auc(), metrics, style, tmp_path / "td.png", tmp_path / "td.pdf")
    survival.forest_figure(make_hazard_ratios(), style, tmp_path / "f.png", tmp_path / "f.pdf")
    for name in ("km", "td", "f"):
        png_ok(tmp_path / f"{name}.png")
    assert survival.format_p(0.0004) == "p < 0.001" and survival.format_p(0.006) == "p = 0.006"


def test_model_summary_figures(tmp_path, style):
    metrics = make_metrics()
    models.coefficients_figure(
        make_coefficients(), metrics, style, tmp_path / "c.png", tmp_path / "c.pdf", max_features=10
    )
    models.performance_figure(metrics, style, tmp_path / "p.png", tmp_path / "p.pdf")
    models.multitask_figure(metrics, style, tmp_path / "m.png", tmp_path / "m.pdf")
    for name in ("c", "p", "m"):
        png_ok(tmp_path / f"{name}.png")
    # A forest has importances, no coefficients: drawn when it ranks best.
    forest = make_coefficients().assign(coefficient=np.nan, importance=0.1)
    models.coefficients_figure(forest, None, style, tmp_path / "i.png", tmp_path / "i.pdf")
    png_ok(tmp_path / "i.png")


def test_empty_tables_give_a_labelled_figure_not_a_crash(tmp_path, style):
    preds = make_predictions().iloc[0:0]
    response.roc_figure(preds, None, style, tmp_path / "r.png", tmp_path / "r.pdf")
    models.multitask_figure(make_metrics().iloc[0:0], style, tmp_path / "m.png", tmp_path / "m.pdf")
    assert (tmp_path / "r.pdf").is_file() and (tmp_path / "m.pdf").is_file()


def test_draw_reads_tables_and_names_missing_columns(tmp_path):
    paths = {"predictions": tmp_path / "predictions.tsv", "metrics": tmp_path / "metrics.tsv"}
    io.write_table(make_predictions(), paths["predictions"])
    io.write_table(make_metrics().drop(columns="ci_low"), paths["metrics"])
    out = {"png": str(tmp_path / "roc.png"), "pdf": str(tmp_path / "roc.pdf")}
    options = {"max_curves": 3, "evaluations": ["nested_cv", "external"]}
    inputs = {k: str(v) for k, v in paths.items()}
    with pytest.raises(UserError, match=r"metrics.tsv: missing column\(s\) \['ci_low'\]"):
        build.draw("roc", inputs, out, options, {})
    io.write_table(make_metrics(), paths["metrics"])
    build.draw("roc", inputs, out, options, {"dpi": 72})
    # 2 of 3 panel widths at 72 dpi (340 px), cropped to the square panels' content.
    png_ok(Path(out["png"]), min_px=250)
    with pytest.raises(UserError, match="unknown figure"):
        build.draw("pie", inputs, out, options, {})


def test_harmonization_and_dice(tmp_path, monkeypatch, style):
    from deltarad.figures import harmonization, segmentation

    check, emb = make_harmonization()
    top = harmonization.centre_spread(check).index[0]
    assert top.endswith("F4")  # largest centre shift relative to its SD
    harmonization.harmonization_figure(check, emb, style, tmp_path / "h.png", tmp_path / "h.pdf")
    qc, samples = make_segmentation_qc()
    segmentation.dice_figure(qc, samples, style, tmp_path / "d.png", tmp_path / "d.pdf")
    png_ok(tmp_path / "h.png")
    png_ok(tmp_path / "d.png")
    # Empty predicted masks: Dice 0 and HD95 undefined everywhere; the HD95 panels say so.
    empty = _drawn(monkeypatch, segmentation)
    segmentation.dice_figure(
        qc.assign(dice=0.0, hd95_mm=np.nan), samples, style, tmp_path / "e.png", tmp_path / "e.pdf"
    )
    texts = [t.get_text() for ax in empty[0].axes for t in ax.texts]
    assert sum("HD95 (mm) undefined\nfor all 48 predictions" in t for t in texts) == 2
    with pytest.raises(UserError, match="not in samples.validated.tsv"):
        segmentation.with_centers(qc, samples.iloc[1:])


def _sphere(shape: tuple[int, int, int], radius: float, value: float = 1.0) -> sitk.Image:
    zz, yy, xx = np.indices(shape)
    c = np.array(shape) / 2
    arr = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2) * value
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    return img


def test_overlay_and_registration_panels_from_images(tmp_path, style):
    from deltarad.figures import registration, segmentation

    rng = np.random.default_rng(5)
    arr = sitk.GetArrayFromImage(_sphere((16, 32, 32), 6, 100.0))
    image = sitk.GetImageFromArray(arr + rng.normal(0, 5, arr.shape).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    mask = sitk.Cast(_sphere((16, 32, 32), 6) > 0, sitk.sitkUInt8)
    # The truth on a coarser grid, as the synthetic cohort's acquisition grid.
    truth = sitk.Resample(
        mask, [16, 16, 8], sitk.Transform(), sitk.sitkNearestNeighbor, (0, 0, 0), (4.0, 4.0, 4.0)
    )
    for name, img in (("img", image), ("mask", mask), ("truth", truth)):
        io.write_image(img, tmp_path / f"{name}.nii.gz")
    assert segmentation.on_grid(truth, image).shape == (16, 32, 32)
    cases = [
        {
            "patient_id": "C1-001",
            "timepoint": tp,
            "image": str(tmp_path / "img.nii.gz"),
            "prediction": str(tmp_path / "mask.nii.gz"),
            "truth": str(tmp_path / "truth.nii.gz"),
        }
        for tp in ("baseline", "followup")
    ]
    segmentation.overlay_figure(cases, style, tmp_path / "o.png", tmp_path / "o.pdf", "rpnet")
    reg = [
        {
            "patient_id": "C1-001",
            "fixed": str(tmp_path / "img.nii.gz"),
            "moving": str(tmp_path / "img.nii.gz"),
            "registered": str(tmp_path / "img.nii.gz"),
            "mask": str(tmp_path / "mask.nii.gz"),
        }
    ]
    registration.registration_panel(reg, style, tmp_path / "r.png", tmp_path / "r.pdf")
    png_ok(tmp_path / "o.png")
    png_ok(tmp_path / "r.png")


def test_table1_counts_per_centre():
    clinical = pd.DataFrame(
        {
            "patient_id": ["A1", "A2", "B1", "B2", "B3", "X9"],
            "response": ["1", "0", "1", "NA", "1", "1"],
            "time": ["100", "200", "300", "400", "500", "1"],
            "event": ["1", "0", "1", "1", "0", "1"],
            "age": ["50", "60", "70", "40", "80", "1"],
            "sex": ["F", "M", "F", "F", "M", "M"],
            "stage": ["II", "III", "II", "II", "III", "I"],
        }
    )
    samples = pd.DataFrame(
        {"patient_id": ["A1", "A2", "B1", "B2", "B3"], "center": ["A", "A", "B", "B", "B"]}
    )
    table = cohort_table(clinical, samples, time_unit="days").set_index("characteristic")
    assert list(table.columns) == ["A", "B", "All"]  # X9 has no scans: left out
    assert table.loc["Patients, n"].tolist() == ["2", "3", "5"]
    assert table.loc["Responders, n (% of assessed)", "B"] == "2 (100 %)"
    assert table.loc["Events, n (%)", "All"] == "3 (60 %)"
    assert table.loc["Sex F, n (%)", "A"] == "1 (50 %)"
    assert table.loc["Follow-up, days, median (IQR)", "A"] == "150.0 (125.0–175.0)"
    assert "Stage I, n (%)" not in table.index


def _plan_config(**figures):
    from deltarad.config import load_config

    config = load_config(REPO / "config/config.yaml", REPO / "config/test.yaml")
    config["figures"].update(figures)
    return config


def test_plan_enables_only_figures_whose_tables_are_produced(tmp_path):
    from deltarad.figures.plan import figure_targets, plan_figures

    later = pd.DataFrame(
        {"patient_id": ["C1-001", "C1-002", "C2-001", "C2-002"], "timepoint": ["followup"] * 4}
    )
    produced_now = {"registered", "segmentation_qc.tsv", "samples.validated.tsv"}

    def produced(path):
        return any(part in str(path) for part in produced_now)

    config = _plan_config(example_patients=2)
    jobs = plan_figures(config, "res", "res/cohort", True, later, produced)
    enabled = sorted(name for name, job in jobs.items() if job.enabled)
    assert enabled == ["dice", "overlays", "registration"]  # no model tables yet
    reg = jobs["registration"]
    assert [c["patient_id"] for c in reg.options["cases"]] == ["C1-001", "C2-002"]
    assert "res/registered/C2-002/followup.nii.gz" in reg.images
    overlays = jobs["overlays"]
    assert overlays.options["method"] == config["segmentation"]["methods"][0]
    assert "res/cohort/truth/masks/C1-001/followup_in_baseline.nii.gz" in overlays.images
    # Each figure gets only its own options: a change to one reruns only the figures using it.
    assert set(jobs["roc"].options) == {"max_curves", "evaluations"}
    assert set(jobs["forest"].options) == {"top_features"}
    targets = {p.name for p in figure_targets(jobs, config, "res")}
    assert targets == {
        "dice.png",
        "dice.pdf",
        "overlays.png",
        "overlays.pdf",
        "registration.png",
        "registration.pdf",
        "table1.tsv",
        "table1.png",
        "table1.pdf",
    }
    # Everything produced, but `include` drops figures on purpose.
    produced_now.add("tables/")
    config = _plan_config(include=["roc", "km"])
    jobs = plan_figures(config, "res", "res/cohort", True, later, produced)
    assert sorted(n for n, j in jobs.items() if j.enabled) == ["km", "roc"]
    assert len(figure_targets(jobs, config, "res")) == 4  # no Table 1
    with pytest.raises(UserError, match=r"\['X-9'\] have no follow-up"):
        plan_figures(_plan_config(example_patient_ids=["X-9"]), "r", "c", True, later, produced)


def test_short_feature_names():
    assert common.short_feature("delta__CT__ring3to6mm__pyrad__original_glcm_Contrast") == (
        "delta · CT · ring3to6mm · glcm_Contrast"
    )
    assert common.short_feature("baseline__CT__tumor__pyrad__log-sigma-1-0-mm-3D_glcm_Idn") == (
        "baseline · CT · tumor · LoG1.0_glcm_Idn"
    )
    assert len(common.short_feature("x" * 200)) == 56


def _drawn(monkeypatch, module):
    """Record the figures `module` saves (the figure functions close them after saving)."""
    figures = []
    real = module.save

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        real(fig, *args, **kwargs)

    monkeypatch.setattr(module, "save", keep)
    return figures


def _layout_problems(fig) -> list[str]:
    """Panels (with their titles, labels and legends), figure legends and figure texts that
    leave the figure or overlap each other, as the renderer lays them out (the saved file is
    cropped to its content, so an overflow would widen it instead of clipping it)."""
    canvas = FigureCanvasAgg(fig)  # pyplot.close left the figure without a drawing canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    figs = [fig, *fig.subfigs]
    items = [
        (f"panel {ax.get_title()!r}", ax.get_tightbbox(renderer))
        for ax in fig.get_axes()
        if ax.get_visible()
    ]
    items += [(f"legend in {f}", lg.get_window_extent(renderer)) for f in figs for lg in f.legends]
    items += [
        (f"text {t.get_text()!r}", t.get_window_extent(renderer))
        for f in figs
        for t in f.texts
        if t.get_visible() and t.get_text().strip()
    ]
    box = fig.bbox.padded(1.0)
    problems = [
        f"outside: {name}"
        for name, e in items
        if not (box.contains(e.x0, e.y0) and box.contains(e.x1, e.y1))
    ]
    for i, (name, e) in enumerate(items):
        for name2, e2 in items[i + 1 :]:
            if e.padded(-1.0).overlaps(e2.padded(-1.0)):
                problems.append(f"overlap: {name} / {name2}")
    return problems


@pytest.mark.parametrize("width_mm", [180.0, 88.0])
def test_table1_and_harmonization_fit_the_style_width(tmp_path, monkeypatch, width_mm):
    from deltarad.figures import harmonization, table1

    narrow = Style.from_config({"dpi": 100, "width_mm": width_mm})
    tables, harmonizations = _drawn(monkeypatch, table1), _drawn(monkeypatch, harmonization)
    clinical = pd.DataFrame(
        {
            "patient_id": [f"{c}-{p}" for c in CENTERS for p in range(5)],
            "response": ["1", "0", "NA", "1", "0"] * 4,
            "time": [str(10.5 * k + 3) for k in range(20)],
            "event": ["1", "0"] * 10,
            "age": [str(40 + k) for k in range(20)],
            "sex": ["F", "M", "M", "F", "M"] * 4,
        }
    )
    samples = clinical[["patient_id"]].assign(center=clinical["patient_id"].str[:2])
    table = cohort_table(clinical, samples, time_unit="months")
    table1.table_figure(table, narrow, tmp_path / "t.png", tmp_path / "t.pdf")
    check, emb = make_harmonization()
    check = check.assign(feature=check["feature"].str.replace("original_", "wavelet-HHH_"))
    harmonization.harmonization_figure(check, emb, narrow, tmp_path / "h.png", tmp_path / "h.pdf")
    for fig in (*tables, *harmonizations):
        assert fig.get_figwidth() * 25.4 == pytest.approx(width_mm, abs=0.5)
        assert _layout_problems(fig) == []
    for name in ("t", "h"):
        # Cropped to the content plus TIGHT's 0.04 in padding: never wider than the style.
        assert imread(tmp_path / f"{name}.png").shape[1] <= width_mm / 25.4 * 100 + 9
