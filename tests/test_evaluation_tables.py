"""Tables shaped like the paper's Tables 1 and 2, and the automatic ordering check."""

from __future__ import annotations

import pytest

from emoedit.evaluation.scoring import METRIC_BY_KEY, METRICS
from emoedit.evaluation.tables import (
    TABLE1_COLUMNS,
    TABLE2_COLUMNS,
    badness,
    check_ordering,
    check_table,
    format_monotonicity,
    format_report,
    format_table,
    format_value,
)

# The paper's own numbers (METHOD.md §6): ours is best on every metric of Table 1.
PAPER_TABLE1 = {
    "ours": {"fed": 17.54, "fid": 87.35, "cpbd": 0.2316, "arcsim": 0.8548},
    "StarGAN": {"fed": 21.84, "fid": 96.67, "cpbd": 0.1748, "arcsim": 0.7828},
    "ExprGAN": {"fed": 33.47, "fid": 134.3, "cpbd": 0.1750, "arcsim": 0.7163},
    "pSp": {"fed": 29.56, "fid": 101.60, "cpbd": 0.2286, "arcsim": 0.7549},
}
PAPER_TABLE2 = {
    "ours": {"fed": 17.54, "fid": 87.35, "arcsim": 0.8548},
    "w/o classifier": {"fed": 20.85, "fid": 89.97, "arcsim": 0.7980},
    "w/o shape": {"fed": 22.86, "fid": 88.90, "arcsim": 0.8159},
    "w/o texture": {"fed": 26.73, "fid": 89.39, "arcsim": 0.7627},
}


def test_paper_values_format_like_the_paper() -> None:
    assert [format_value(v) for v in (17.54, 87.35, 0.2316, 134.3, 101.60)] == ["17.54", "87.35", "0.2316",
                                                                                "134.3", "101.6"]
    assert format_value(None) == "–" and format_value(float("nan")) == "–" and format_value(True) == "–"


def test_the_paper_orderings_hold_on_the_paper_numbers() -> None:
    checks = check_table(PAPER_TABLE1, TABLE1_COLUMNS[1:])
    assert all(checks[k].holds for k in ("fed", "fid", "cpbd", "arcsim"))
    assert checks["psnr"].holds is None  # nobody measured it
    checks = check_table(PAPER_TABLE2, TABLE2_COLUMNS[1:])
    assert all(checks[k].holds for k in ("fed", "fid", "arcsim"))
    assert checks["fed"].compared == ("w/o classifier", "w/o shape", "w/o texture")


def test_ordering_failures_name_the_rivals_and_ties_fail() -> None:
    values = {"ours": 0.80, "StarGAN": 0.85, "pSp": 0.80, "ExprGAN": 0.70}
    check = check_ordering(values, "max", rivals=("StarGAN", "pSp", "ExprGAN"))
    assert check.holds is False
    assert check.failures == ("StarGAN (0.85 vs ours 0.8)", "pSp (0.8 vs ours 0.8)")
    assert check_ordering({"ours": 3.0, "StarGAN": 4.0}, "min", rivals=("StarGAN",)).holds is True
    assert check_ordering({"ours": 1.1, "w/o smoothing": 1.5}, "one", rivals=("w/o smoothing",)).holds is True
    assert check_ordering({"ours": 1.4, "w/o smoothing": 0.8}, "one", rivals=("w/o smoothing",)).holds is False
    assert check_ordering({"ours": None, "StarGAN": 1.0}, "min", rivals=("StarGAN",)).holds is None
    assert check_ordering({"ours": 1.0}, "min", rivals=("StarGAN",)).holds is None
    assert badness(2.0, "max") < badness(1.0, "max") and badness(0.9, "one") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="direction"):
        badness(1.0, "up")


def test_table_shape_bold_arrows_references_and_check_column() -> None:
    summary = {name: dict(values) for name, values in PAPER_TABLE1.items()}
    summary["StarGAN"]["cpbd"] = 0.30  # StarGAN now sharper than ours
    summary["ground truth"] = {"fed": 0.0, "cpbd": 0.25}
    table = format_table(summary, TABLE1_COLUMNS, question="ours best?", rivals=TABLE1_COLUMNS[1:])
    lines = table.splitlines()
    assert lines[0] == "| metric | ours | StarGAN | ExprGAN | pSp | *ground truth* | ours best? |"
    assert lines[2] == "| FED ↓ | **17.54** | 21.84 | 33.47 | 29.56 | *0* | ✓ |"
    assert lines[4] == "| CPBD ↑ | 0.2316 | **0.3** | 0.175 | 0.2286 | *0.25* | ✗ StarGAN (0.3 vs ours 0.2316) |"
    assert len(lines) == 2 + 4  # rows nobody measured are left out
    partial = {"ours": PAPER_TABLE2["ours"], "w/o shape": PAPER_TABLE2["w/o shape"]}  # absent methods: no column
    table2 = format_table(partial, TABLE2_COLUMNS, question="every ablation worse?", rivals=TABLE2_COLUMNS[1:],
                          labels={"ours": "full"}, metric_labels={"arcsim": "ArcSim†"})
    assert table2.splitlines()[0] == "| metric | full | w/o shape | every ablation worse? |"
    assert "| ArcSim† ↑ | **0.8548** | 0.8159 | ✓ |" in table2
    assert format_table({}, TABLE1_COLUMNS, question="?", rivals=()) == "_(nothing measured)_"


def test_every_metric_has_a_direction_and_a_legend() -> None:
    assert {m.direction for m in METRICS} <= {"max", "min", "one"}
    assert [m.key for m in METRICS if m.group == "paper"] == ["fed", "fid", "cpbd", "arcsim"]
    assert METRIC_BY_KEY["fid"].set_level and not METRIC_BY_KEY["psnr"].set_level


def test_report_and_monotonicity_table() -> None:
    mono = {"set": "seen", "num_items": 2, "alphas": [0.0, 0.5, 1.0], "methods": {
        "ours": {"items": 2, "spearman": 1.0, "increasing_fraction": 1.0,
                 "mean_confidence": {"0": 0.1, "0.5": 0.4, "1": 0.7}},
        "ground truth": {"items": 2, "spearman": 0.5, "increasing_fraction": 0.5,
                         "mean_confidence": {"0": 0.1, "0.5": 0.5, "1": 0.45}}}}
    assert format_monotonicity(mono).splitlines()[2] == "| ours | 0.1 | 0.4 | 0.7 | 1 | 1 | 2 |"
    assert "*ground truth*" in format_monotonicity(mono)
    results = {
        "world": {"path": "w", "preset": "demo", "seed": 0, "image_size": 128, "num_frames": 25},
        "run": {"machine": "cpu x (2 cores)", "device": "cpu", "torch": "2", "finished_utc": "now",
                "frames": {"description": "all"}},
        "notes": ["no FID Inception weights (fid_weights: ...): FID is omitted"],
        "skipped": [{"name": "pSp", "reason": "no baselines.psp_tgan checkpoint configured"}],
        "arcsim_source": "identity judge",
        "sets": {"seen": {"title": "seen subjects", "items": 84, "level": 3, "counts": {"ours": 84},
                          "summary": {**PAPER_TABLE1, "w/o shape": PAPER_TABLE2["w/o shape"]}}},
        "monotonicity": mono,
    }
    report = format_report(results)
    for text in ("preset **demo**, seed **0**", "Machine: cpu x (2 cores)", "- pSp: no baselines.psp_tgan",
                 "FID is omitted", "## Set `seen`: seen subjects", "### Table 1", "### Table 2",
                 "| ArcSim† ↑ |", "† ArcFace weights were not given", "## Intensity monotonicity", "### Metrics"):
        assert text in report, text


def test_report_footnote_names_the_rereconstruction() -> None:
    from emoedit.evaluation.tables import rereconstruction_footnote

    results = {"sets": {}, "rereconstruction": {
        "mode": "fitter", "steps": 40, "render_size": 64,
        "description": "photometric re-fit of the whole frames (FaceFitter photometric stage, 40 steps, render 64 px, "
                       "no landmarks) from the input's true coefficients, identity and albedo fixed"}}
    report = format_report(results)
    assert ("Expression / vertex / lip-opening / landmark-jitter columns: photometric re-fit of the whole frames "
            "(FaceFitter photometric stage, 40 steps, render 64 px, no landmarks) from the input's true "
            "coefficients, identity and albedo fixed.") in report
    regressor = rereconstruction_footnote({"mode": "regressor", "description": "the bundle's reconstructor"})
    assert regressor.startswith("Expression / vertex / lip-opening / landmark-jitter columns: the bundle's") and \
        "*ground truth* column is clearly below the *input* column" in regressor
    assert "landmark-jitter columns" not in format_report({"sets": {}})  # nothing measured: no footnote
