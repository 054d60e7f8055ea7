"""The evaluation as pictures and one page: matplotlib PNGs and report.md, logged as run artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from training.evaluate import Evaluation, Scorer

POLICY_ORDER = ("oracle", "ceiling", "new", "champion", "best_single", "rules", "logging", "random")
SHARES = {"new": "new policy", "champion": "champion", "ceiling": "feature ceiling"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def feature_importance(model: Scorer, out: Path, top: int = 20) -> Path | None:
    booster = getattr(model, "booster", None)
    if booster is None:
        return None
    plt = _pyplot()
    gain = pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).nlargest(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(gain) + 1))
    ax.barh(gain.index, gain.to_numpy())
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance (LightGBM gain)")
    return _save(fig, out / "feature_importance.png")


def calibration_plot(ev: Evaluation, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for key, c in ev.curves.items():
        if key.startswith("calibration_"):
            ax.plot(c["predicted"], c["observed"], marker="o", label=key.removeprefix("calibration_"))
            top = max(top, float(np.max(c["predicted"])), float(np.max(c["observed"])))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfect")
    ax.set_xlabel("predicted P(success)")
    ax.set_ylabel("observed success rate")
    ax.set_title("Calibration on the test period (deciles)")
    ax.legend()
    return _save(fig, out / "calibration.png")


def uplift_plot(ev: Evaluation, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, c in ev.curves.items():
        if key.startswith("uplift_"):
            (line,) = ax.plot(c["share"], c["gain"], label=f"{key.removeprefix('uplift_')} vs none")
            ax.plot([0, 1], [0, c["gain"][-1]], color=line.get_color(), linestyle=":")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("share of customers treated (ranked by predicted uplift)")
    ax.set_ylabel("cumulative gain per customer")
    ax.set_title("Cumulative gain curves (dotted: random targeting)")
    ax.legend()
    return _save(fig, out / "uplift.png")


def policy_plot(ev: Evaluation, out: Path) -> Path:
    plt = _pyplot()
    names = [n for n in POLICY_ORDER if n in ev.policies]
    pv = [ev.policies[n] for n in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    dr = np.array([p.dr for p in pv])
    ax.errorbar(
        dr, y, xerr=[dr - [p.dr_low for p in pv], [p.dr_high for p in pv] - dr], fmt="o", capsize=4, label="DR (95% CI)"
    )
    ax.plot([p.ips for p in pv], y + 0.15, "x", label="IPS")
    ax.plot([p.snips for p in pv], y - 0.15, "+", label="SNIPS")
    truth = [(p.true, i) for i, p in enumerate(pv) if p.true is not None]
    if truth:
        ax.plot([t for t, _ in truth], [i for _, i in truth], "D", mfc="none", color="black", label="true value")
    ax.set_yticks(y, names)
    ax.set_xlabel("net value per decision")
    ax.set_title("Policy value, off-policy estimates on the test period")
    ax.legend(fontsize="small")
    return _save(fig, out / "policy_value.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def markdown(ev: Evaluation, images: list[Path]) -> str:
    policies = pd.DataFrame(
        [
            {"policy": n, "DR": p.dr, "DR 95% CI": f"{p.dr_low:.3f} .. {p.dr_high:.3f}", "IPS": p.ips, "SNIPS": p.snips}
            | ({"true": p.true, "DR - true": p.dr - p.true} if p.true is not None else {})
            for n in POLICY_ORDER
            if (p := ev.policies.get(n)) is not None
        ]
    )
    lines = [
        "# Decision model evaluation",
        "",
        f"Test period: {int(ev.metrics['test_rows']):,} decisions (the latest, never seen in training). "
        f"AUC {ev.metrics['test_auc']:.3f}, log loss {ev.metrics['test_logloss']:.4f}, "
        f"calibration error {ev.metrics['test_ece']:.4f}.",
        "",
        "## Policy value (net value per decision)",
        "",
        _table(policies),
        "",
    ]
    lines += [
        f"Best single action: **{ev.best_single}** where it is allowed (constant values per decision: "
        + ", ".join(f"{a} {v:.3f}" for a, v in sorted(ev.single_values.items(), key=lambda kv: -kv[1]))
        + ").",
        "",
    ]
    shares = [
        f"{label} {ev.metrics[f'share_of_oracle_margin_{name}']:.1%}"
        for name, label in SHARES.items()
        if f"share_of_oracle_margin_{name}" in ev.metrics
    ]
    if shares:
        lines += ["Share of the oracle's margin over the best single action (true values): " + ", ".join(shares), ""]
    if ev.paired:
        rows = [
            {
                "comparison": n.replace("_vs_", " vs "),
                "paired DR difference": p.diff,
                "95% CI": f"{p.low:+.4f} .. {p.high:+.4f}",
                "decisions that differ": f"{p.differ:.1%}",
                "customers": p.customers,
            }
            for n, p in ev.paired.items()
        ]
        lines += [
            "## Paired on the same decisions (bootstrap clustered by customer)",
            "",
            _table(pd.DataFrame(rows)),
            "",
        ]
    lines += ["## Per action", "", _table(ev.per_action), ""]
    lines += [f"- {n}" for n in ev.notes]
    lines += ["", *(f"![{p.stem}]({p.name})" for p in images)]
    return "\n".join(lines) + "\n"


def write_report(ev: Evaluation, model: Scorer, out: Path) -> list[Path]:
    """All plots and report.md into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    images = [
        p
        for p in (feature_importance(model, out), calibration_plot(ev, out), uplift_plot(ev, out), policy_plot(ev, out))
        if p
    ]
    report = out / "report.md"
    report.write_text(markdown(ev, images))
    table = out / "policy_values.csv"
    pd.DataFrame({n: p.as_dict() for n, p in ev.policies.items()}).T.rename_axis("policy").to_csv(table)
    return [*images, report, table]
