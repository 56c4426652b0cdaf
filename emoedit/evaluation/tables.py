"""Markdown tables shaped like the paper's Tables 1 and 2, with an automatic ordering check.

The paper (METHOD.md §6) lists metrics as rows and methods as columns:

- **Table 1** — ours against the baselines (StarGAN, ExprGAN, pSp): its four metrics (FED,
  FID, CPBD, ArcSim), here followed by the synthetic world's exact metrics;
- **Table 2** — the full method against its ablations (w/o classifier, w/o shape, w/o
  texture; here also w/o smoothing and w/o teeth).

Every row carries its direction (↑ higher is better, ↓ lower is better, →1 closest to 1 is
better), the best value among the methods is **bold**, the references (``input (no
edit)``, ``ground truth``: floors and ceilings, never in the ranking) follow in italics, and
the last column answers the paper's claim for that metric (:func:`check_ordering`):

- Table 1: *is ours the best?* — ✓, or ✗ naming each method that is as good or better;
- Table 2: *is every ablation worse than the full method?* — ✓, or ✗ naming the ablations
  that are not.

A metric nobody measured shows ``–``; a check with nothing to compare shows ``–``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from emoedit.evaluation.scoring import METRICS, MetricSpec

ARROWS: dict[str, str] = {"max": "↑", "min": "↓", "one": "→1"}
TABLE1_COLUMNS: tuple[str, ...] = ("ours", "StarGAN", "ExprGAN", "pSp")  # the paper's column order
TABLE2_COLUMNS: tuple[str, ...] = ("ours", "w/o classifier", "w/o shape", "w/o texture", "w/o smoothing", "w/o teeth")
REFERENCE_COLUMNS: tuple[str, ...] = ("input (no edit)", "ground truth")


@dataclass(frozen=True)
class OrderingCheck:
    """The answer to "is ours better than each rival on this metric?"."""

    metric: str  # metric key
    holds: bool | None  # True / False; None = not measurable (ours or every rival missing)
    failures: tuple[str, ...]  # "StarGAN (0.91 vs ours 0.85)" for each rival at least as good as ours
    compared: tuple[str, ...]  # rivals that had a value

    def to_json(self) -> dict[str, Any]:
        return {"holds": self.holds, "failures": list(self.failures), "compared": list(self.compared)}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def badness(value: float, direction: str) -> float:
    """A number where lower is better, for any direction."""
    if direction == "max":
        return -value
    if direction == "min":
        return value
    if direction == "one":
        return abs(value - 1.0)
    raise ValueError(f"unknown metric direction {direction!r}")


def format_value(value: Any) -> str:
    """4 significant digits (the paper's style: 17.54, 0.2316, 134.3); ``–`` when missing."""
    if not _finite(value):
        return "–"
    return f"{value:.4g}"


def check_ordering(
    values: Mapping[str, Any],  # method -> value of one metric (None / NaN = missing)
    direction: str,  # "max", "min" or "one"
    *,
    metric: str = "",  # metric key (for the result)
    ours: str = "ours",  # the method that should win
    rivals: Sequence[str],  # the methods it should beat
) -> OrderingCheck:
    """Does ``ours`` beat every rival strictly? Ties count as failures (the claim is "better")."""
    mine = values.get(ours)
    compared = tuple(r for r in rivals if r != ours and _finite(values.get(r)))
    if not _finite(mine) or not compared:
        return OrderingCheck(metric=metric, holds=None, failures=(), compared=compared)
    failures = tuple(f"{r} ({format_value(values[r])} vs ours {format_value(mine)})" for r in compared
                     if badness(float(values[r]), direction) <= badness(float(mine), direction))
    return OrderingCheck(metric=metric, holds=not failures, failures=failures, compared=compared)


def check_table(
    summary: Mapping[str, Mapping[str, Any]],  # method -> metric -> value
    rivals: Sequence[str],  # Table 1: the baselines; Table 2: the ablations
    *,
    metrics: Sequence[MetricSpec] = METRICS,  # rows
) -> dict[str, OrderingCheck]:
    """:func:`check_ordering` for every metric."""
    return {m.key: check_ordering({name: row.get(m.key) for name, row in summary.items()}, m.direction,
                                  metric=m.key, rivals=rivals) for m in metrics}


def _mark(check: OrderingCheck) -> str:
    if check.holds is None:
        return "–"
    return "✓" if check.holds else "✗ " + "; ".join(check.failures)


def format_table(
    summary: Mapping[str, Mapping[str, Any]],  # method -> metric -> value (references included)
    columns: Sequence[str],  # methods in column order (absent ones are left out)
    *,
    question: str,  # header of the ordering column, e.g. "ours best?"
    rivals: Sequence[str],  # methods ours must beat
    metrics: Sequence[MetricSpec] = METRICS,  # rows
    references: Sequence[str] = REFERENCE_COLUMNS,  # italic columns after the methods
    labels: Mapping[str, str] | None = None,  # column label overrides (e.g. "ours" -> "full")
    metric_labels: Mapping[str, str] | None = None,  # row label overrides (e.g. "arcsim" -> "ArcSim†")
) -> str:
    """One markdown table: metrics as rows, methods as columns (see the module docstring)."""
    labels = dict(labels or {})
    metric_labels = dict(metric_labels or {})
    methods = [c for c in columns if c in summary]
    refs = [r for r in references if r in summary]
    rows = [m for m in metrics if any(_finite(summary[c].get(m.key)) for c in (*methods, *refs))]
    if not methods or not rows:
        return "_(nothing measured)_"
    header = ["metric", *(labels.get(c, c) for c in methods), *(f"*{r}*" for r in refs), question]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - 1) + "---|"]
    checks = check_table({c: summary[c] for c in methods}, rivals, metrics=rows)
    for m in rows:
        values = {c: summary[c].get(m.key) for c in methods}
        finite = [badness(float(v), m.direction) for v in values.values() if _finite(v)]
        best = min(finite) if finite else None
        cells = []
        for c in methods:
            text = format_value(values[c])
            if best is not None and _finite(values[c]) and len(finite) > 1 and \
                    badness(float(values[c]), m.direction) == best:
                text = f"**{text}**"
            cells.append(text)
        cells += [f"*{format_value(summary[r].get(m.key))}*" if _finite(summary[r].get(m.key)) else "–" for r in refs]
        label = f"{metric_labels.get(m.key, m.label)} {ARROWS[m.direction]}"
        lines.append("| " + " | ".join([label, *cells, _mark(checks[m.key])]) + " |")
    return "\n".join(lines)


def format_monotonicity(
    monotonicity: Mapping[str, Any],  # results.json's "monotonicity" block
) -> str:
    """Judge confidence in the target emotion at each α, Spearman ρ(α, confidence), fraction of rising steps."""
    methods = monotonicity.get("methods", {})
    alphas = [float(a) for a in monotonicity.get("alphas", [])]
    if not methods or not alphas:
        return "_(no intensity sweep)_"
    header = ["method", *(f"conf. α={a:g}" for a in alphas), "Spearman ρ ↑", "rising steps ↑", "items"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - 1) + "---|"]
    for name, block in methods.items():
        curve = block.get("mean_confidence", {})
        cells = [format_value(curve.get(f"{a:g}")) for a in alphas]
        cells += [format_value(block.get("spearman")), format_value(block.get("increasing_fraction")),
                  str(block.get("items", 0))]
        shown = f"*{name}*" if name in REFERENCE_COLUMNS else name
        lines.append("| " + " | ".join([shown, *cells]) + " |")
    return "\n".join(lines)


def _legend(metrics: Sequence[MetricSpec]) -> str:
    return "\n".join(f"- **{m.label}** {ARROWS[m.direction]}: {m.meaning}" for m in metrics)


def format_report(results: Mapping[str, Any]) -> str:
    """The whole ``tables.md`` from ``results.json``'s content."""
    run = results.get("run", {})
    world = results.get("world", {})
    lines = ["# Evaluation (METHOD.md §6, Tables 1 and 2)", ""]
    lines.append(f"World: `{world.get('path')}` (preset **{world.get('preset')}**, seed **{world.get('seed')}**, "
                 f"{world.get('image_size')} px, {world.get('num_frames')} frames per clip). "
                 f"Machine: {run.get('machine')}. Device: {run.get('device')}. Torch {run.get('torch')}.")
    frames = run.get("frames", {})
    lines.append(f"Frames scored per clip: {frames.get('description', 'all')}. Generated {run.get('finished_utc')}.")
    lines.append("")
    notes = list(results.get("notes", []))
    skipped = results.get("skipped", [])
    if skipped:
        lines.append("**Skipped methods** (not run; no numbers are shown for them):")
        lines += [f"- {s['name']}: {s['reason']}" for s in skipped]
        lines.append("")
    if notes:
        lines.append("**Notes**:")
        lines += [f"- {n}" for n in notes]
        lines.append("")
    arcsim_label = {"arcsim": "ArcSim†"} if results.get("arcsim_source") == "identity judge" else {}
    for set_name, block in results.get("sets", {}).items():
        summary = block.get("summary", {})
        lines += [f"## Set `{set_name}`: {block.get('title', '')}", "",
                  f"{block.get('items', 0)} items (input clip × target emotion at level {block.get('level')}); "
                  f"rows per method: " + ", ".join(f"{k} {v}" for k, v in block.get("counts", {}).items()), ""]
        lines += ["### Table 1 — ours vs baselines", "",
                  format_table(summary, TABLE1_COLUMNS, question="ours best?", rivals=TABLE1_COLUMNS[1:],
                               metric_labels=arcsim_label), ""]
        lines += ["### Table 2 — ablations", "",
                  format_table(summary, TABLE2_COLUMNS, question="every ablation worse?", rivals=TABLE2_COLUMNS[1:],
                               labels={"ours": "full"}, metric_labels=arcsim_label), ""]
    mono = results.get("monotonicity")
    if mono:
        lines += ["## Intensity monotonicity", "",
                  f"Set `{mono.get('set')}`, {mono.get('num_items')} items; the emotion judge's confidence in the "
                  "target emotion (mean over frames and items) at each strength α; Spearman ρ and the fraction "
                  "of rising consecutive α steps per item, averaged. The ground truth is rendered by the world "
                  "at each α (not video-encoded).", "", format_monotonicity(mono), ""]
        if mono.get("not_run"):
            lines += ["Not in the sweep: " + "; ".join(mono["not_run"]) + ".", ""]
    if arcsim_label:
        lines.append("† ArcFace weights were not given: ArcSim is the cosine of the **identity judge's** embeddings "
                     "(trained on the world's ground-truth frames), the same number as ID sim. (judge).")
        lines.append("")
    lines += ["### Metrics", "", _legend(METRICS), "",
              "References (italics) are not methods: *input (no edit)* is the unedited clip, *ground truth* the "
              "world's true edit scored by the same code — the floor/ceiling of each metric under this measurement "
              "(e.g. the judge's accuracy on true frames, the re-reconstruction's own error).", ""]
    rereconstruction = results.get("rereconstruction")
    if rereconstruction:
        lines += [rereconstruction_footnote(rereconstruction), ""]
    return "\n".join(lines)


def rereconstruction_footnote(
    rereconstruction: Mapping[str, Any],  # results.json's "rereconstruction" block (mode, description, ...)
) -> str:
    """One sentence: how the expression / vertex / lip-opening / landmark-jitter columns were measured."""
    text = f"Expression / vertex / lip-opening / landmark-jitter columns: {rereconstruction.get('description')}."
    if rereconstruction.get("mode") == "fitter":
        text += (" With the identity fixed, the vertex error is the error of the expression's displacement (mm); "
                 "the coefficient MAE is weaker (a non-orthogonal expression basis lets coefficients trade off).")
    if rereconstruction.get("mode") == "regressor":
        text += (" A regressor need not measure expression: these columns rank methods only where the *ground "
                 "truth* column is clearly below the *input* column.")
    return text


__all__ = [
    "ARROWS",
    "OrderingCheck",
    "REFERENCE_COLUMNS",
    "TABLE1_COLUMNS",
    "TABLE2_COLUMNS",
    "badness",
    "check_ordering",
    "check_table",
    "format_monotonicity",
    "format_report",
    "format_table",
    "format_value",
    "rereconstruction_footnote",
]
