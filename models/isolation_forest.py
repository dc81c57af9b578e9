"""Isolation forest on windows: scikit-learn fits it, numpy scores it.

``fit`` trains scikit-learn's ``IsolationForest`` on windows of ``window`` points (sklearn is
imported there, lazily: scoring never needs it). Each window's features are its values and, by
default, its first differences: on seasonal KPIs the raw level of a window mostly says where in
the day it is, while the differences isolate spikes and noise bursts (on the test data the AUC
goes from about 0.77 to 0.9 with them). The fitted trees are exported as padded arrays,
``(n_trees, max_nodes)`` tensors in the state_dict (``children_left``, ``children_right``,
``feature``, ``threshold``, ``n_node_samples``), and scored by a vectorised traversal: all windows
and all trees advance one level per step, so the Python loop runs over depth levels (at most
``ceil(log2(max_samples))``), never over samples. The result equals sklearn's ``-score_samples``
(up to float summation order); no pickle is involved in saving or loading.

Score of a window: ``2 ** (-mean path length / c(max_samples))`` in (0, 1], higher = easier to
isolate. Score of a point: mean over the scoring windows covering it (``score_stride``); causal
(``causal=True``): the score of the feature window ending on it (rows ``t - window + 1 .. t``; the
difference of its first row reaches back to row ``t - window``), one stride-1 window per row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from models.base import Detector, arrays_from_state, arrays_to_state
from models.checks import StateError, check_trees, integer, table
from models.configs.isolation_forest import IsolationForestConfig
from models.frame import VALUE, kpi_slices
from models.windowing import covering_windows_by_kpi, scores_at_window_ends, spread_to_points, windows_by_kpi

TREE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "n_node_samples")


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): mean path length of an unsuccessful BST search among n points (Liu et al.), as sklearn."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def export_forest(forest) -> dict[str, torch.Tensor]:
    """A fitted sklearn IsolationForest as padded per-tree arrays, with feature ids in window coordinates."""
    trees = [est.tree_ for est in forest.estimators_]
    size = max(t.node_count for t in trees)
    out = {"children_left": np.full((len(trees), size), -1, np.int64),
           "children_right": np.full((len(trees), size), -1, np.int64),
           "feature": np.full((len(trees), size), -2, np.int64),
           "threshold": np.full((len(trees), size), -2.0, np.float64),
           "n_node_samples": np.zeros((len(trees), size), np.int64)}
    for i, (tree, features) in enumerate(zip(trees, forest.estimators_features_)):  # per tree, not per sample
        n = tree.node_count
        out["children_left"][i, :n] = tree.children_left
        out["children_right"][i, :n] = tree.children_right
        # A tree may have been fitted on a subset/permutation of the features: map back to window positions.
        out["feature"][i, :n] = np.where(tree.feature >= 0, np.asarray(features)[np.maximum(tree.feature, 0)], -2)
        out["threshold"][i, :n] = tree.threshold
        out["n_node_samples"][i, :n] = tree.n_node_samples
    return {k: torch.from_numpy(v) for k, v in out.items()}


def max_tree_depth(max_samples: int) -> int:
    """The depth sklearn's IsolationForest grows its trees to: ``ceil(log2(max_samples))``."""
    return int(np.ceil(np.log2(max(max_samples, 2))))


def check_forest_arrays(arrays: dict[str, np.ndarray], max_samples: int, n_features: int) -> None:
    """Check exported trees (:func:`export_forest`' tables) before anything walks them.

    One ``(trees, nodes)`` shape for every table; a node is a leaf where ``children_left < 0``, and the
    child links of the others are in range and form trees no deeper than sklearn grows them
    (:func:`models.checks.check_trees`); each split reads one of the window's ``n_features`` features
    at a finite threshold; sample counts are not negative.
    """
    table(arrays, TREE_ARRAYS)
    left = arrays["children_left"]
    if not np.issubdtype(left.dtype, np.integer):
        raise StateError("children_left", f"must hold integer node indices, got dtype {left.dtype}")
    leaf = left < 0
    check_trees(left, arrays["children_right"], leaf, max_tree_depth(max_samples),
                names=("children_left", "children_right"))
    feature, threshold = arrays["feature"], np.asarray(arrays["threshold"], dtype=np.float64)
    if not np.issubdtype(feature.dtype, np.integer):
        raise StateError("feature", f"must hold integer feature indices, got dtype {feature.dtype}")
    for key, bad, what in (("feature", ~leaf & ((feature < 0) | (feature >= n_features)),
                            f"is not one of the window's {n_features} features"),
                           ("threshold", ~leaf & ~np.isfinite(threshold), "is not a finite split threshold"),
                           ("n_node_samples", arrays["n_node_samples"] < 0, "is a negative sample count")):
        if bad.any():
            tree, node = (int(i[0]) for i in np.nonzero(bad))
            raise StateError(f"{key}[{tree}, {node}]", f"{arrays[key][tree, node]!r} {what}")


class CompiledForest:
    """Flat lookup tables for the level-by-level traversal of all trees at once."""

    def __init__(self, arrays: dict[str, np.ndarray], max_samples: int, n_features: int):
        left, right = arrays["children_left"], arrays["children_right"]
        check_forest_arrays(arrays, max_samples, n_features)  # the level loop below trusts the links
        n_trees, size = left.shape
        base = (np.arange(n_trees) * size)[:, None]
        node = base + np.arange(size)[None, :]
        leaf = left < 0
        # Leaves point to themselves, so extra levels leave a finished traversal where it is.
        self.child = np.stack([np.where(leaf, node, base + left), np.where(leaf, node, base + right)], -1).ravel()
        self.feature = np.where(leaf, 0, arrays["feature"]).ravel()
        self.threshold = np.where(leaf, np.inf, arrays["threshold"]).ravel()
        depth = np.zeros(n_trees * size, np.int64)
        level, frontier = 0, base[:, 0]
        while len(frontier):  # one step per depth level
            inner = frontier[~leaf.ravel()[frontier]]
            frontier = np.concatenate([self.child[2 * inner], self.child[2 * inner + 1]])
            level += 1
            depth[frontier] = level
        self.levels = int(depth.max())
        # sklearn: depth of the leaf (edges) + c(samples left in the leaf)
        self.path = depth + average_path_length(arrays["n_node_samples"].ravel())
        self.roots = base[:, 0]
        self.normaliser = n_trees * float(average_path_length(np.array([max_samples]))[0])

    def score(self, x: np.ndarray) -> np.ndarray:
        """``-score_samples`` of sklearn for windows ``x (n, window)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)  # sklearn's trees compare float32 inputs
        flat, row = x.ravel(), (np.arange(len(x)) * x.shape[1])[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots)))
        for _ in range(self.levels):
            right = flat[row + self.feature[node]] > self.threshold[node]
            node = self.child[2 * node + right]
        return 2.0 ** (-self.path[node].sum(axis=1) / self.normaliser)


class IsolationForest(Detector):
    name = "isolation_forest"
    config_class = IsolationForestConfig
    config: IsolationForestConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.arrays: dict[str, np.ndarray] = {}
        self.max_samples = 0
        self.sklearn_forest = None  # the fitted sklearn object, in memory only (tests compare against it)
        self._compiled: CompiledForest | None = None

    def point_features(self, frame: pd.DataFrame) -> np.ndarray:
        """``(n, len(features))``: the value and/or its first difference (0 at each KPI's first row)."""
        value = frame[VALUE].to_numpy(np.float64)
        diff = np.diff(value, prepend=value[:1])
        diff[[sl.start for _, sl in kpi_slices(frame)]] = 0.0  # never difference across a KPI boundary
        columns = {"value": value, "diff": diff}
        return np.stack([columns[f] for f in self.config.features], axis=1)

    def windows(self, frame: pd.DataFrame, stride: int | None = None):
        """Feature windows ``(n_windows, window * n_features)`` and their start rows; ``stride=None``
        gives every stride-1 window (training), an int gives covering windows at that stride (scoring)."""
        x, slices, length = self.point_features(frame), kpi_slices(frame), self.config.window
        windows, starts = (windows_by_kpi(x, slices, length) if stride is None
                           else covering_windows_by_kpi(x, slices, length, stride))
        return windows.reshape(len(windows), -1), starts

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        from sklearn.ensemble import IsolationForest as SkIsolationForest  # lazy: scoring must not need sklearn

        cfg, seed = self.config, self.train_config.seed
        windows, _ = self.windows(train)
        if len(windows) == 0:
            raise ValueError(f"{self.name}: the train split gives no window of {cfg.window} points")
        if len(windows) > cfg.max_train_windows:
            pick = np.random.default_rng(seed).choice(len(windows), cfg.max_train_windows, replace=False)
            windows = windows[np.sort(pick)]
        forest = SkIsolationForest(n_estimators=cfg.n_estimators, max_samples=min(cfg.max_samples, len(windows)),
                                   random_state=seed).fit(windows)
        self.sklearn_forest = forest
        self.max_samples = int(forest.max_samples_)
        self._load_state_dict(export_forest(forest))

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        size = self.config.score_batch_size
        return np.concatenate([self._compiled.score(windows[i:i + size]) for i in range(0, len(windows), size)])

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        if causal:  # (k, window, n_features) strided views flatten to feature rows without a copy
            return scores_at_window_ends(self.point_features(frame), kpi_slices(frame), self.config.window,
                                         lambda w: self.score_windows(w.reshape(len(w), -1)))
        windows, starts = self.windows(frame, self.config.score_stride)
        if len(starts) == 0:
            return np.full(len(frame), np.nan)
        return spread_to_points(self.score_windows(windows), starts, len(frame), self.config.window)

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return arrays_to_state(self.arrays)

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.arrays = arrays_from_state(self.name, state, TREE_ARRAYS)
        self._compiled = CompiledForest(self.arrays, self.max_samples,
                                        self.config.window * len(self.config.features))

    def _fitted_scalars(self) -> dict[str, float]:
        return {"max_samples": self.max_samples}

    def _load_fitted_scalars(self, scalars: dict[str, float]) -> None:
        # c(max_samples) normalises every path length: below 2 samples it is 0, and every score NaN.
        self.max_samples = integer(scalars.get("max_samples"), "max_samples", minimum=2)
