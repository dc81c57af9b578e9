"""Stacked GBDT (Opprentice, Liu et al., IMC 2015): simple detectors as features, a supervised model on top.

Features of each point (``StackedGbdtConfig.feature_names``):

- ``surprise_<member>``: the calibrated score of each unsupervised ``member`` (default ``diff_z``,
  ``robust_zscore``, ``seasonal_residual``, ``windowed_gaussian``), fitted and calibrated per KPI on
  the train (+ validation) frames by :class:`models.members.CalibratedMembers`; NaN before a member's
  window is full. These are what transfers from KPI to KPI and from the validation to the test split:
  a surprise of 3 is a 1-in-1,000 score on every KPI, where a raw difference of 3 train MADs is routine
  on one KPI and rare on the next (BENCHMARKS.md, AIOps: honest ``aiops_f1`` 0.68 with the members,
  0.57 with the per-point features below added to them, 0.27 with those features alone).
- with ``own_features``, also causal per-point features from the past of the same KPI, scale-free
  (the values are already normalised with the KPI's train median/MAD; differences are further divided
  by the KPI's train scale of first differences ``diff_scale``, as :mod:`models.diff_z`):
  ``value``; ``diff_<l>`` = ``(x_t - x_{t-l}) / diff_scale`` for each lag in ``lags``; ``med_<w>`` and
  ``mad_<w>``, the deviation from the median of the ``w`` points before ``t`` over ``diff_scale`` and
  over the rolling MAD, for each ``w`` in ``widths``; ``std_<w>``, the standard deviation of the first
  differences over the ``w`` points ending at ``t``, over ``diff_scale``; ``day``, ``week``:
  ``(x_t - x_{t-period}) / diff_scale``, the periods converted to grid steps from the KPI's timestamps
  (:func:`models.seasonal_residual.period_steps`).

Missing history is NaN and stays NaN: the trees route it natively (each split learns a side for it).

``fit`` trains scikit-learn's ``HistGradientBoostingClassifier`` (imported there, lazily) on the train
split's labels. What it is taught is what the challenge metric credits: ``aiops_f1`` counts an anomaly
of ``n`` points as ``n`` true positives when one of its first ``delay + 1`` points raises an alarm, so
each anomaly's first ``onset_points`` points carry its weight (``n / onset_points`` each) and its later
points none (:func:`onset_weights`): a model taught every anomalous point alike learns to recognise
the middle of long anomalies, too late to count. The two classes then get the same total weight
(positives are ~1-10% of points). Early stopping on the validation split's loss, weighted the same
way, when it has positives; at most ``max_train_rows`` rows (every weighted positive kept, negatives
drawn at random and weighted up to stand for all). The fitted trees are exported to padded
``(n_trees, max_nodes)`` tensors (``value``, ``feature``, ``threshold``, ``missing_left``, ``left``,
``right``, ``is_leaf``) plus ``baseline`` and scored by a vectorised numpy traversal
(:class:`CompiledTrees`): all rows and all trees advance one level per step. Score = the summed raw
prediction (the logit of the anomaly probability, summed in sklearn's order: equal to its
``decision_function``): monotone in the probability, without its saturation at 1.

Speed: most of a score is the members' own scoring (rules, which score their KPIs on the task's
threads; BENCHMARKS.md, "Speed"); the traversal reads precomputed node conditions
(:class:`CompiledTrees`), half the cost of reading each node's feature and threshold.

Every feature reads rows up to ``t`` of its KPI (the members are causal rules, their calibration a
fixed map): causal as it stands, ``causal=True`` takes the same path. Every row is scored (NaN
features are routed, not dropped).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from models.base import Detector, arrays_from_state, arrays_to_state, labels_of
from models.checks import StateError, check_trees, mapping, number, positive_scales, table
from models.configs.stacked_gbdt import StackedGbdtConfig
from models.diff_z import diff_mad_scale
from models.frame import KPI_ID, MAD_TO_STD, MISSING, TIMESTAMP, VALUE, kpi_slices
from models.members import CalibratedMembers
from models.seasonal_residual import grid_step, period_steps

SINGLE_THREAD_ROWS = 50_000  # training rows below which sklearn gets one thread (see _fit_core)
TREE_ARRAYS = ("value", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "baseline")


def lagged_difference(x: np.ndarray, lag: int | None) -> np.ndarray:
    """``x_t - x_{t-lag}`` (NaN where there is no such row, or no lag)."""
    out = np.full(len(x), np.nan)
    if lag is not None and 0 < lag < len(x):
        out[lag:] = x[lag:] - x[:-lag]
    return out


def kpi_features(x: np.ndarray, step: pd.Timedelta | None, scale: float, cfg: StackedGbdtConfig) -> np.ndarray:
    """The ``(len(x), n)`` own features of one KPI, in :meth:`StackedGbdtConfig.own_feature_names` order."""
    series = pd.Series(x)
    columns = [x] + [lagged_difference(x, lag) / scale for lag in cfg.lags]
    for w in cfg.widths:
        median = series.rolling(w, min_periods=w).median().shift(1)
        deviation = series - median
        mad = MAD_TO_STD * deviation.abs().rolling(w, min_periods=w).median().shift(1)
        columns += [deviation.to_numpy() / scale, deviation.to_numpy() / np.maximum(mad.to_numpy(), cfg.min_scale)]
    first_diff = series.diff()
    columns += [first_diff.rolling(w, min_periods=2).std(ddof=0).to_numpy() / scale for w in cfg.widths]
    columns += [lagged_difference(x, period_steps(p, step)) / scale for p in (cfg.day, cfg.week)]
    return np.stack(columns, axis=1)


def check_tree_arrays(arrays: dict[str, np.ndarray], n_features: int, max_depth: int) -> int:
    """Check exported trees (:func:`export_trees`' tables) before anything walks them; returns their depth.

    One ``(trees, nodes)`` shape for every table and one ``baseline``; child links in range forming trees
    no deeper than ``max_depth`` (:func:`models.checks.check_trees`); the feature of each split node one
    of the ``n_features`` columns; split thresholds not NaN and not ``-inf`` (sklearn writes ``+inf`` for
    a split that sends only the missing values right). Leaf values and the baseline are finite (every
    floating tensor of a loaded state is, :func:`models.checks.read_state_dict`).
    """
    table(arrays, ("left", "right", "is_leaf", "missing_left", "feature", "threshold", "value"))
    if np.size(arrays["baseline"]) != 1:
        raise StateError("baseline", f"must hold one value, got shape {tuple(np.shape(arrays['baseline']))}")
    leaf = arrays["is_leaf"].astype(bool)
    levels = check_trees(arrays["left"], arrays["right"], leaf, max_depth)
    feature, threshold = arrays["feature"], np.asarray(arrays["threshold"], dtype=np.float64)
    if not np.issubdtype(feature.dtype, np.integer):
        raise StateError("feature", f"must hold integer column indices, got dtype {feature.dtype}")
    for key, bad, what in (("feature", ~leaf & ((feature < 0) | (feature >= n_features)),
                            f"is not one of the config's {n_features} feature columns"),
                           ("threshold", ~leaf & (np.isnan(threshold) | (threshold == -np.inf)),
                            "is NaN or -inf: not a split")):
        if bad.any():
            tree, node = (int(i[0]) for i in np.nonzero(bad))
            raise StateError(f"{key}[{tree}, {node}]", f"{arrays[key][tree, node]!r} {what}")
    if not np.isfinite(np.asarray(arrays["value"], dtype=np.float64)[leaf]).all():
        raise StateError("value", "leaf values must be finite")
    return levels


class CompiledTrees:
    """The trees as lookup tables for a vectorised traversal of all trees at once, in two steps per
    block of rows:

    1. the condition ``x[feature] <= threshold`` of every split node for every row, feature by feature:
       the split nodes are renumbered so that those reading one column are consecutive, and one
       broadcast comparison of that column with their thresholds fills their rows of a
       ``(nodes, rows)`` boolean matrix, without a gather;
    2. one traversal step per level: each (tree, row) reads its node's condition from that matrix and
       its next node from the child table. Two gathers per level, where reading the feature index,
       the value, the threshold and the child from the padded trees took four: gathers, not
       arithmetic, are what a numpy traversal pays for.

    Missing values without a branch per node: a node whose NaN goes left compares the column with NaN
    replaced by -inf (``-inf <= threshold``: left), one whose NaN goes right the column itself
    (``NaN <= threshold`` is False: right); the two kinds are separate groups of nodes. Leaves point to
    themselves, so extra levels leave a finished traversal where it is. The tree values are summed in
    tree order onto the baseline, as sklearn's ``decision_function`` does.
    """

    def __init__(self, arrays: dict[str, np.ndarray], n_features: int, max_depth: int):
        # Checked first: the traversal below runs a fixed number of levels, which only a checked table bounds.
        levels = check_tree_arrays(arrays, n_features, max_depth)
        n_trees, size = arrays["left"].shape
        base = (np.arange(n_trees) * size)[:, None]
        leaf = arrays["is_leaf"].astype(bool).ravel()
        left, right = (base + arrays["left"]).ravel(), (base + arrays["right"]).ravel()
        roots = base[:, 0]
        split = np.flatnonzero(~leaf)
        # Reachable leaves only: the padding of short trees is unreferenced leaves.
        leaves = np.flatnonzero(leaf & np.isin(np.arange(leaf.size), np.r_[roots, left[split], right[split]]))
        feature = arrays["feature"].ravel()
        nan_left = arrays["missing_left"].astype(bool).ravel()
        split = split[np.lexsort((split, nan_left[split], feature[split]))]  # grouped by (feature, NaN side)
        old = np.r_[split, leaves]
        new = np.zeros(leaf.size, np.intp)
        new[old] = np.arange(len(old))
        self.n_split, self.n_nodes = len(split), len(old)
        # child[2 * node + condition]: condition True (x <= threshold) goes left
        self.child = np.stack([np.where(leaf[old], new[old], new[right[old]]),
                               np.where(leaf[old], new[old], new[left[old]])], axis=1).ravel()
        self.threshold = arrays["threshold"].ravel()[split][:, None]
        self.value = np.where(leaf[old], arrays["value"].ravel()[old], 0.0)
        self.roots = new[roots]
        keys = np.stack([feature[split], nan_left[split]], axis=1)
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]) if len(split) else np.empty(0, int)
        stops = np.r_[starts[1:], len(split)]
        self.groups = [(int(keys[a, 0]), bool(keys[a, 1]), int(a), int(b)) for a, b in zip(starts, stops)]
        self.baseline = float(arrays["baseline"].reshape(-1)[0])
        self.levels = levels  # the deepest leaf: one traversal step per level

    def raw_predict(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        """sklearn's ``decision_function`` for feature rows ``x (n, n_features)``, float64 as sklearn,
        in blocks of ``batch`` rows (their ``(nodes, rows)`` matrix stays in the CPU cache; the buffers
        are reused by every block)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty(len(x))
        batch = max(1, min(batch, len(x)))
        cond = np.zeros((self.n_nodes, batch), np.bool_)  # leaves' rows stay False: never read as a branch
        flat = cond.reshape(-1).view(np.uint8)
        columns = np.empty((2, x.shape[1], batch))
        for start in range(0, len(x), batch):
            rows = min(batch, len(x) - start)
            plain, nan_low = columns[0, :, :rows], columns[1, :, :rows]
            plain[...] = x[start:start + rows].T
            np.copyto(nan_low, plain)
            nan_low[np.isnan(nan_low)] = -np.inf
            for f, nan_left, a, b in self.groups:
                np.greater_equal(self.threshold[a:b], (nan_low if nan_left else plain)[f], out=cond[a:b, :rows])
            at = np.arange(rows)
            node = np.take(self.child, 2 * self.roots[:, None] + cond[self.roots, :rows])  # (trees, rows)
            for _ in range(self.levels - 1):
                node = np.take(self.child, 2 * node + np.take(flat, node * batch + at))
            out[start:start + rows] = np.add.reduce(np.take(self.value, node), axis=0, initial=self.baseline)
        return out


def export_trees(model) -> dict[str, torch.Tensor]:
    """A fitted binary HistGradientBoostingClassifier as padded per-tree arrays (one loop per tree)."""
    nodes = [predictors[0].nodes for predictors in model._predictors]
    if any(n["is_categorical"].any() for n in nodes):
        raise ValueError("categorical splits are not exported")
    size = max(len(n) for n in nodes)
    out = {"value": np.zeros((len(nodes), size)), "feature": np.zeros((len(nodes), size), np.int64),
           "threshold": np.zeros((len(nodes), size)), "missing_left": np.zeros((len(nodes), size), np.bool_),
           "left": np.zeros((len(nodes), size), np.int64), "right": np.zeros((len(nodes), size), np.int64),
           "is_leaf": np.ones((len(nodes), size), np.bool_)}  # padding: unreachable leaves of value 0
    for i, n in enumerate(nodes):
        k = len(n)
        out["value"][i, :k], out["feature"][i, :k], out["threshold"][i, :k] = n["value"], n["feature_idx"], n["num_threshold"]
        out["missing_left"][i, :k], out["is_leaf"][i, :k] = n["missing_go_to_left"], n["is_leaf"]
        out["left"][i, :k], out["right"][i, :k] = n["left"], n["right"]
    state = {k: torch.from_numpy(v) for k, v in out.items()}
    state["baseline"] = torch.tensor(np.asarray(model._baseline_prediction, np.float64).reshape(-1))
    return state


def onset_weights(labels: np.ndarray, kpi_ids: np.ndarray, points: int) -> np.ndarray:
    """The training weight of each point's positive label: an anomaly (a run of positive labels within
    one KPI) of ``n`` points puts ``n / min(n, points)`` on each of its first ``points`` points and 0
    on the rest, so its total stays ``n``; negatives get 0. ``points = 0``: 1 on every positive."""
    positive = np.asarray(labels) == 1
    if points == 0:
        return positive.astype(np.float64)
    ids = np.asarray(kpi_ids)
    new_kpi = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, bool)
    starts = positive & (new_kpi | ~np.r_[False, positive[:-1]])
    run = np.where(positive, np.cumsum(starts), 0)  # 1, 2, ... per anomaly; 0 for negatives
    length = np.bincount(run)
    first = np.r_[0, np.flatnonzero(starts)]  # first[k]: the row where anomaly k starts
    offset = np.arange(len(run)) - first[run]
    n = length[run].astype(np.float64)
    return np.where(positive & (offset < points), n / np.minimum(n, points), 0.0)


def class_balanced(y: np.ndarray, positive_weight: np.ndarray, negative_weight: float = 1.0) -> np.ndarray:
    """Sample weights: negatives ``negative_weight``, positives ``positive_weight`` rescaled so that both
    classes weigh the same in total; then all scaled to a mean of 1 (what sklearn's defaults assume)."""
    w = np.where(y == 1, positive_weight, negative_weight).astype(np.float64)
    pos, neg = w[y == 1].sum(), w[y == 0].sum()
    if pos > 0 and neg > 0:
        w[y == 1] *= neg / pos
    return w * (len(w) / w.sum()) if w.sum() > 0 else w


class StackedGbdt(Detector):
    name = "stacked_gbdt"
    supervised = True
    config_class = StackedGbdtConfig
    config: StackedGbdtConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.members = CalibratedMembers(self.name, self.config.members, self.config.calibration_config())
        self.scales: dict[str, float] = {}
        self.global_scale = 1.0
        self.fit_info: dict[str, Any] = {}  # rows and positives handed to sklearn, rounds kept
        self.arrays: dict[str, np.ndarray] = {}
        self.sklearn_model = None  # the fitted sklearn object, in memory only (tests compare against it)
        self._compiled: CompiledTrees | None = None

    def features(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """The ``(len(frame), n_features)`` features, in :meth:`StackedGbdtConfig.feature_names` order."""
        parts = [self.members.surprises(frame, causal)] if self.config.members else []
        if self.config.own_features:
            values = frame[VALUE].to_numpy(dtype=np.float64)
            own = np.empty((len(frame), len(self.config.own_feature_names())))
            for kpi, sl in kpi_slices(frame):  # one vectorised block per KPI
                own[sl] = kpi_features(values[sl], grid_step(frame[TIMESTAMP].iloc[sl]),
                                       self.scales.get(kpi, self.global_scale), self.config)
            parts.append(own)
        return np.concatenate(parts, axis=1)

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier  # lazy: scoring must not need sklearn
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        cfg, seed = self.config, self.train_config.seed
        if cfg.members:
            self.members.fit(train, val, self.train_config)
        if cfg.own_features:  # their differences are in units of each KPI's train scale of first differences
            values, missing = train[VALUE].to_numpy(dtype=np.float64), train[MISSING].to_numpy(dtype=bool)
            scales = {kpi: diff_mad_scale(values[sl], missing[sl]) for kpi, sl in kpi_slices(train)}
            self.scales = {k: max(v, cfg.min_scale) for k, v in scales.items() if v is not None}
            self.global_scale = float(np.median(list(self.scales.values()))) if self.scales else 1.0

        y = labels_of(train)
        weight = onset_weights(y, train[KPI_ID].to_numpy(), cfg.onset_points)
        rows = np.flatnonzero((y == 0) | (weight > 0))  # an anomaly's later points teach nothing: left out
        negatives = rows[y[rows] == 0]
        negative_weight = 1.0
        if len(rows) > cfg.max_train_rows:  # keep every weighted positive: they are the scarce class
            rng = np.random.default_rng(seed)
            kept = rng.choice(negatives, max(cfg.max_train_rows - (len(rows) - len(negatives)), 1), replace=False)
            negative_weight = len(negatives) / len(kept)  # the drawn negatives stand for all of them
            rows = np.sort(np.concatenate([rows[y[rows] == 1], kept]))
        x = self.features(train)[rows]
        y, weight = y[rows], class_balanced(y[rows], weight[rows], negative_weight)
        # sklearn cannot bin an all-NaN column (a week lag on less than a week of training): a constant
        # column instead, which no tree splits on, so its value at scoring time is never read.
        x[:, np.isnan(x).all(axis=0)] = 0.0
        model = HistGradientBoostingClassifier(
            learning_rate=cfg.learning_rate, max_iter=cfg.max_iter, max_depth=cfg.max_depth,
            max_leaf_nodes=cfg.max_leaf_nodes, min_samples_leaf=cfg.min_samples_leaf,
            l2_regularization=cfg.l2_regularization, n_iter_no_change=cfg.n_iter_no_change,
            random_state=seed, early_stopping=False)
        fit_kwargs: dict[str, Any] = {}
        if val is not None:
            y_val = labels_of(val)
            w_val = onset_weights(y_val, val[KPI_ID].to_numpy(), cfg.onset_points)
            keep = (y_val == 0) | (w_val > 0)
            if 0 < (y_val[keep] == 1).sum() < keep.sum():  # early stopping needs both classes
                model.set_params(early_stopping=True, scoring="loss")
                fit_kwargs = {"X_val": self.features(val)[keep], "y_val": y_val[keep],
                              "sample_weight_val": class_balanced(y_val[keep], w_val[keep])}
        # Small fits run on one OpenMP thread: per-split parallel regions cost more than they save there,
        # and on a busy machine each barrier can wait a whole time slice (a 3 s fit took 20-45 s on 2 cores).
        with threadpool_limits(1 if len(x) < SINGLE_THREAD_ROWS else None, user_api="openmp"):
            model.fit(x, y, sample_weight=weight, **fit_kwargs)
        self.sklearn_model = model
        self.fit_info = {"rows": len(y), "positives": int(y.sum()), "iterations": int(model.n_iter_),
                         "early_stopping": bool(fit_kwargs)}
        self._use_trees(export_trees(model))
        self.device = self.members.device

    def raw_predict(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        """The traversal in blocks of ``batch`` rows (bounds the (nodes, rows) condition matrix)."""
        return self._compiled.raw_predict(x, batch)

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        # Features read rows up to t only: already causal, the same in both modes.
        return self.raw_predict(self.features(frame, causal))

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {**arrays_to_state(self.arrays), **self.members.state_dict()}  # members' keys: "<member>.<key>"

    def _use_trees(self, state: dict[str, torch.Tensor]) -> None:
        self.arrays = arrays_from_state(self.name, state, TREE_ARRAYS)
        self._compiled = CompiledTrees(self.arrays, len(self.config.feature_names()), self.config.max_depth)

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._use_trees(state)
        self.members.load_state_dict(state, owner_keys=TREE_ARRAYS)
        self.device = self.members.device

    def _fitted_scalars(self) -> dict[str, Any]:
        return {"scales": dict(self.scales), "global_scale": self.global_scale,
                "features": self.config.feature_names(), "fit_info": dict(self.fit_info),
                **(self.members.to_scalars() if self.config.members else {})}

    def _load_fitted_scalars(self, scalars: dict[str, Any]) -> None:
        # The own features divide by these: a scale <= 0 would flip or blow up every difference.
        self.scales = positive_scales(scalars.get("scales"), "scales")
        self.global_scale = number(scalars.get("global_scale", 1.0), "global_scale", positive=True)
        self.fit_info = dict(mapping(scalars.get("fit_info"), "fit_info"))
        if self.config.members:
            self.members.from_scalars(scalars, self.train_config)
