"""The evaluate stage's DVC plots: precision-recall curves and calibrated score-versus-label figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE, has_labels
from pipeline.io.outputs import safe_stem


def pr_curve(labels: np.ndarray, scores: np.ndarray, missing: np.ndarray, points: int = 200) -> pd.DataFrame:
    """Precision/recall at up to ``points`` thresholds (DVC plots want small files)."""
    from sklearn.metrics import precision_recall_curve

    keep = ~missing
    if labels[keep].sum() == 0:
        return pd.DataFrame({"recall": [], "precision": []})
    precision, recall, _ = precision_recall_curve(labels[keep], scores[keep])
    idx = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int))
    return pd.DataFrame({"recall": recall[idx], "precision": precision[idx]})


def pr_curves(curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every detector's curve in one long table (``detector, recall, precision``): the one DVC plot that
    overlays them, coloured by detector (the ``pr_overlay`` template, .dvc/plots/pr_overlay.json)."""
    parts = [curve.assign(detector=name)[["detector", "recall", "precision"]] for name, curve in curves.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["detector", "recall", "precision"])


def plot_scores(full: pd.DataFrame, all_scores: dict, results: dict, out: Path, n_kpis: int) -> None:
    """Score versus label on the test split, for the first few KPIs with anomalies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    test = full[full["split"] == "test"]
    if not has_labels(test) or not all_scores:
        return
    kpis = [k for k, g in test.groupby(KPI_ID, sort=True) if g[LABEL].any()][:n_kpis]
    for kpi in kpis:
        m = ((full["split"] == "test") & (full[KPI_ID] == kpi)).to_numpy()
        part = full[m]
        fig, axes = plt.subplots(len(all_scores) + 1, 1, figsize=(12, 1.6 * (len(all_scores) + 1)), sharex=True)
        axes[0].plot(part[TIMESTAMP], part[VALUE], lw=0.7, color="black")
        axes[0].fill_between(part[TIMESTAMP], part[VALUE].min(), part[VALUE].max(), where=part[LABEL] == 1,
                             color="red", alpha=0.25, label="labelled anomaly")
        axes[0].set_ylabel("value (norm.)")
        axes[0].legend(loc="upper right", fontsize=7)
        for ax, (name, scores) in zip(axes[1:], all_scores.items()):
            ax.plot(part[TIMESTAMP], scores[m], lw=0.7)
            value = results[name].get("threshold", {}).get("global")
            if isinstance(value, (int, float)):
                ax.axhline(value, color="red", lw=0.6, ls="--")
            ax.set_ylabel(name, fontsize=7)
        fig.suptitle(f"{kpi}: test split, calibrated scores and thresholds")
        fig.tight_layout()
        fig.savefig(out / f"{safe_stem(str(kpi))}.png", dpi=80)  # any id: bounded, no two KPIs share a file
        plt.close(fig)
