"""The contract every kpiguard detector follows.

Style: Merlion for configuration (one dataclass per detector, validated, round-trips through a
plain dict) and darts.ad for the public surface (``fit``/``score`` check their inputs, then call
the private ``_fit_core``/``_score_core`` that each detector implements).

Scores are raw anomaly scores, higher = more anomalous, one finite float64 per input row in the
input's row order. Thresholds are not a detector concern: the pipeline owns them.

Points no window covers
-----------------------
A windowed detector cannot score the first points of a KPI that no full window covers (the first
``time_steps`` points for the forecaster, the first ``window - 1`` for the classifiers, ...).
``_score_core`` returns NaN there and :meth:`Detector.score` fills them, in this one place, with
the **minimum score of the same KPI**: such points are never more anomalous than anything that was
actually scored. A KPI with no scored point at all (shorter than one window) gets the minimum of the
whole frame, or 0.0 when nothing in the frame was scored.

Causal scoring
--------------
``score(frame, causal=True)`` gives scores where the score at row ``t`` is computed from rows up to
and including ``t`` of the same KPI only, as a streaming detector would (what the NAB benchmark
requires): changing later rows, or cutting the frame after ``t``, leaves the score at ``t`` as it is.
Windowed detectors score ``t`` from the stride-1 window that ends at ``t``
(:func:`models.windowing.scores_at_window_ends`); each detector's docstring says how it reads that
window. The default (``causal=False``) is the offline rule, which may look ahead (a point's score
averages the windows covering it). One part of the output is not causal in either mode: the fill of
points no window covers (below) is the minimum of the KPI's scores, later ones included. It carries
no information beyond "least anomalous": a filled point never exceeds any threshold that a scored
point of its KPI stays below.

Persistence
-----------
``save(dir)`` writes ``config.json`` (detector name, detector config, train config, small fitted
scalars, history) and ``weights.pt`` (a ``state_dict``: a flat mapping of names to tensors, nothing
else). ``load`` reads the tensors back with ``torch.load(weights_only=True)``; no object is pickled.
``load`` checks both files before the detector may score (:mod:`models.checks`): what it cannot use
raises :class:`models.checks.StateError` naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

import numpy as np
import pandas as pd

from models.checks import StateError, blame, check_finite, mapping, number, read_json_object, read_state_dict
from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, VALUE, has_labels, kpi_codes, kpi_slices

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
REQUIRED_COLUMNS = (KPI_ID, TIMESTAMP, VALUE, MISSING)

if TYPE_CHECKING:
    import torch
# torch is imported where tensors are saved or loaded, not here: the configs below (and models.configs)
# are read by params validation, which must not pay for a torch import (see models/configs/__init__.py).


def read_config(directory: str | Path) -> dict[str, Any]:
    """A saved detector's ``config.json`` as a JSON object (:class:`models.checks.StateError` otherwise)."""
    return read_json_object(Path(directory) / CONFIG_FILE)


class SkipDetector(Exception):
    """A detector cannot be trained on this data (a supervised one without labels); not an error."""


def _coerce(owner: str, key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a config field's annotation; ints are accepted for floats."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise TypeError(f"{owner}: '{key}' must not be null")
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(owner, key, value, inner)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{owner}: '{key}' must be a list, got {type(value).__name__} ({value!r})")
        return tuple(_coerce(owner, f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    expected = {bool: (bool,), int: (int, np.integer), float: (int, float, np.integer, np.floating),
                str: (str,)}.get(annotation)
    if expected is None:
        raise TypeError(f"{owner}: '{key}' has an unsupported annotation {annotation!r}")
    # bool is an int subclass; `window: true` is a typo, not a window of 1.
    if not isinstance(value, expected) or (annotation is not bool and isinstance(value, (bool, np.bool_))):
        raise TypeError(f"{owner}: '{key}' must be {annotation.__name__}, got {type(value).__name__} ({value!r})")
    if annotation is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{owner}: '{key}' must be finite, got {value!r}")
    return int(value) if annotation is int else value


class _Config:
    """``from_dict``/``to_dict`` for flat config dataclasses; fields are type-checked on construction."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(type(self).__name__, f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Range checks beyond types; subclasses raise ``ValueError`` naming the key."""

    def _positive(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"{type(self).__name__}: '{key}' must be > 0, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        d = dict(d or {})
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"{cls.__name__}: unknown key '{key}'; known keys: {', '.join(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


@dataclasses.dataclass
class TrainConfig(_Config):
    """How to train (shared by all detectors); built by the pipeline from params.yaml's ``train:``."""

    device: str = "auto"            # auto | cpu | cuda | cuda:N; auto = CUDA when available
    seed: int = 0
    max_epochs: int = 20
    patience: int = 3               # epochs without a better validation loss before stopping
    batch_size: int = 256
    learning_rate: float = 1e-3
    num_workers: int = 0
    progress: bool = True           # a tqdm bar per epoch
    checkpoint_dir: str | None = None  # where the best epoch's state_dict is written during training
    # Caps on every neural detector's samples (params.yaml's train.budget); None: the detector's own.
    max_train_windows: int | None = None   # training samples drawn per epoch, on top of the detector's cap
    max_val_windows: int | None = None     # validation samples of the early-stopping loss (evenly spaced)

    def validate(self) -> None:
        self._positive("max_epochs", "patience", "batch_size", "learning_rate", "max_train_windows",
                       "max_val_windows")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig: 'num_workers' must be >= 0, got {self.num_workers}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"TrainConfig: 'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclasses.dataclass
class DetectorConfig(_Config):
    """Base of every detector's hyperparameter dataclass (one subclass per detector)."""


def check_frame(frame: Any, what: str, need_rows: bool = True) -> None:
    """Raise ``ValueError`` unless ``frame`` is a prepared frame: columns, finite values, sorted."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    absent = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if absent:
        raise ValueError(f"{what}: missing column(s) {absent}; a prepared frame has {list(REQUIRED_COLUMNS)} "
                         f"(found {list(frame.columns)})")
    if need_rows and len(frame) == 0:
        raise ValueError(f"{what}: the frame is empty")
    values = frame[VALUE].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(bad.argmax())
        raise ValueError(f"{what}: {int(bad.sum())} non-finite '{VALUE}'(s), first at row {i} "
                         f"(kpi {frame[KPI_ID].iat[i]!r}, {frame[TIMESTAMP].iat[i]})")
    codes, kpis = kpi_codes(frame)  # sorted by KPI: codes never decrease and the KPIs come in order
    same = codes[1:] == codes[:-1]
    if (codes[1:] < codes[:-1]).any() or not kpis.is_monotonic_increasing:
        raise ValueError(f"{what}: rows must be sorted by ({KPI_ID}, {TIMESTAMP})")
    ts = frame[TIMESTAMP]
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert(None)  # datetime64 rather than an object array of Timestamps
    ts = ts.to_numpy()
    unsorted = same & (ts[1:] <= ts[:-1])
    if unsorted.any():
        i = int(unsorted.argmax()) + 1
        raise ValueError(f"{what}: timestamps must increase within each KPI; row {i} (kpi {kpis[codes[i]]!r}, "
                         f"{ts[i]}) does not come after the row before it")


def fill_uncovered(scores: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """The one place NaN (= no window covered the point) becomes a score: the KPI's minimum.

    NaN means that and nothing else: the scores of covered points are checked finite where windows are
    scored (:func:`models.windowing.finite_window_scores`, the networks' ``_infer``), and a loaded
    detector's weights and fitted values are finite (:mod:`models.checks`), so broken weights raise
    there instead of passing for points no window covers (and filling a whole day with 0)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if np.isinf(scores).any():
        raise RuntimeError(f"{int(np.isinf(scores).sum())} infinite score(s); this is a detector bug")
    if not np.isnan(scores).any():
        return scores
    overall = np.nanmin(scores) if (~np.isnan(scores)).any() else 0.0
    for _, sl in kpi_slices(frame):
        part = scores[sl]
        gaps = np.isnan(part)
        if gaps.any():
            part[gaps] = part[~gaps].min() if (~gaps).any() else overall
    return scores


class Detector:
    """Base class: input checks, timing, the uncovered-point fill, save/load.

    Subclasses set ``name``, ``supervised`` and ``config_class`` and implement ``_fit_core``,
    ``_score_core(frame, causal)`` (NaN where no window covers a point), and, when they hold fitted state,
    ``_state_dict``/``_load_state_dict`` (tensors) and ``_fitted_scalars``/``_load_fitted_scalars``; one that
    compares each point against a baseline also implements ``_expected_core`` (see :meth:`expected`).
    """

    name: ClassVar[str] = ""
    supervised: ClassVar[bool] = False
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig

    def __init__(self, config: DetectorConfig | dict | None = None, train_config: TrainConfig | dict | None = None):
        if config is None or isinstance(config, dict):
            config = self.config_class.from_dict(config)
        elif not isinstance(config, self.config_class):
            raise TypeError(f"{self.name}: config must be a {self.config_class.__name__} or a dict, "
                            f"got {type(config).__name__}")
        if train_config is None or isinstance(train_config, dict):
            train_config = TrainConfig.from_dict(train_config)
        self.config = config
        self.train_config = train_config
        self.history: list[dict] = []
        self.fit_seconds = 0.0
        self.device = "cpu"
        self._fitted = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, device={self.device!r})"

    # -- public API -------------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, val: pd.DataFrame | None = None) -> "Detector":
        check_frame(train, f"{self.name}.fit(train)")
        if val is not None:
            check_frame(val, f"{self.name}.fit(val)", need_rows=False)
            val = val if len(val) else None
        if self.supervised:
            if not has_labels(train):
                raise SkipDetector(f"{self.name} is supervised and the train split has no labels; skipped")
            if not (train[LABEL].fillna(0).to_numpy() == 1).any():
                raise SkipDetector(f"{self.name} is supervised and the train split has no positive "
                                   f"labels; skipped")
        self.history = []
        start = time.perf_counter()
        self._fit_core(train, val)
        self.fit_seconds = time.perf_counter() - start
        self._fitted = True
        return self

    def score(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """One raw anomaly score per row; ``causal=True``: the score at row ``t`` uses only rows up to
        and including ``t`` of its KPI (see "Causal scoring" above)."""
        return fill_uncovered(self.score_unfilled(frame, causal), frame)

    def score_unfilled(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """:meth:`score` without the fill: NaN at the points no window covers. For a caller that must
        tell "scored low" from "not scored" (the ensemble averages only the members that scored a point)."""
        if not self._fitted:
            raise RuntimeError(f"{self.name}: call fit() or load() before score()")
        if not isinstance(causal, (bool, np.bool_)):
            raise TypeError(f"{self.name}.score: 'causal' must be a bool, got {type(causal).__name__} ({causal!r})")
        check_frame(frame, f"{self.name}.score", need_rows=False)
        return self.score_checked(frame, bool(causal))

    def score_checked(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """:meth:`score_unfilled` of a frame its caller has checked already (a detector scoring its
        nested members checks the frame once, not once per member)."""
        if len(frame) == 0:
            return np.empty(0, dtype=np.float64)
        raw = np.asarray(self._score_core(frame, causal=bool(causal)), dtype=np.float64)
        if raw.shape != (len(frame),):
            raise RuntimeError(f"{self.name}: _score_core returned shape {raw.shape} for {len(frame)} rows")
        return raw

    def expected(self, frame: pd.DataFrame) -> np.ndarray | None:
        """What the detector expected at each row, in normalised units (NaN where it has no baseline yet),
        or None when it compares against no baseline (a network's reconstruction error, a tree's
        isolation depth: nothing a person reads as "the value it should have had"). Serving turns it
        into the scored rows' ``expected`` band (:mod:`pipeline.serving.expected`); a detector without
        one gets a band from the KPI's own earlier values at the same time of day. Like a causal score,
        the value at ``t`` reads rows before ``t`` of its KPI only."""
        if not self._fitted:
            raise RuntimeError(f"{self.name}: call fit() or load() before expected()")
        check_frame(frame, f"{self.name}.expected", need_rows=False)
        if len(frame) == 0:
            return None
        out = self._expected_core(frame)
        if out is None:
            return None
        out = np.asarray(out, dtype=np.float64)
        if out.shape != (len(frame),):
            raise RuntimeError(f"{self.name}: _expected_core returned shape {out.shape} for {len(frame)} rows")
        return out

    def save(self, directory: str | Path) -> Path:
        if not self._fitted:
            raise RuntimeError(f"{self.name}: nothing to save, the detector is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"detector": self.name, "config": self.config.to_dict(),
                "train_config": self.train_config.to_dict(), "fitted": self._fitted_scalars(),
                "fit_seconds": self.fit_seconds, "history": self.history}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        import torch

        torch.save({k: v.detach().cpu() for k, v in self._state_dict().items()}, directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> "Detector":
        """Rebuild a saved detector; ``device`` overrides the saved one (a CUDA-trained model on a CPU box
        falls back to CPU when no device is given).

        Every part is checked before the detector is returned (:mod:`models.checks`): a file that is not
        what ``save`` writes, or a value that could not score (not finite, a scale <= 0, a tree that is
        not a tree), raises :class:`models.checks.StateError` naming the file and the field."""
        import torch

        directory = Path(directory)
        meta = read_config(directory)
        with blame(file=CONFIG_FILE):
            absent = [k for k in ("detector", "config", "train_config") if k not in meta]
            if absent:
                raise StateError(absent[0], f"is missing: {CONFIG_FILE} must hold what save() writes")
            if meta.get("detector") != cls.name:
                raise StateError("detector", f"holds a {meta.get('detector')!r} detector, not {cls.name!r}")
            with blame("train_config"):
                train_config = TrainConfig.from_dict(mapping(meta.get("train_config"), "train_config"))
            if device is not None:
                train_config.device = device
            elif train_config.device.startswith("cuda") and not torch.cuda.is_available():
                train_config.device = "cpu"
            with blame("config"):
                detector = cls(mapping(meta.get("config"), "config"), train_config)
            with blame("fitted"):
                fitted = mapping(meta.get("fitted"), "fitted")
                check_finite(fitted)
                detector._load_fitted_scalars(fitted)
            with blame("history"):
                detector.history = list(meta.get("history") or [])
            detector.fit_seconds = number(meta.get("fit_seconds") or 0.0, "fit_seconds")
        state = read_state_dict(directory / WEIGHTS_FILE, detector.device)
        with blame(file=WEIGHTS_FILE):
            detector._load_state_dict(state)
        detector._fitted = True
        return detector

    # -- what subclasses provide --------------------------------------------------------------
    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        raise NotImplementedError

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """Raw scores, NaN where no window covers a point; ``causal``: row ``t`` from rows <= ``t`` only."""
        raise NotImplementedError

    def _expected_core(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The baseline of :meth:`expected` (normalised units, NaN where unknown); None: the detector has none."""
        return None

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected weights {sorted(state)}")

    def _fitted_scalars(self) -> dict[str, Any]:
        """Small fitted values for config.json: JSON-serialisable (numbers, strings, nested dicts and
        lists), round-tripped as they are by :meth:`save`/:meth:`load`."""
        return {}

    def _load_fitted_scalars(self, scalars: dict[str, Any]) -> None:
        pass


class FixedRule(Detector):
    """A rule over each KPI's own recent past: nothing is learnt, and the score at row ``t`` reads rows
    up to ``t`` of its KPI only, so it is causal as it stands and ``causal=True`` takes the same path.
    Subclasses implement :meth:`_score_kpi` for one KPI's rows (NaN where the rule has too little history).

    KPIs are scored on this task's CPU threads (torch's thread count, which ``pipeline.threads`` sizes
    to the task's share of the machine): each KPI is independent, and numpy's and pandas' rolling
    kernels release the GIL, so two cores score about twice the points. The scores do not depend on it.
    """

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        pass  # a fixed rule; nothing to estimate

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        out = np.full(len(frame), np.nan)
        slices = [sl for _, sl in kpi_slices(frame)]
        parts = [frame.iloc[sl] for sl in slices]  # sliced here: the threads share no pandas object

        def score_one(k: int) -> None:
            out[slices[k]] = self._score_kpi(parts[k])

        workers = min(len(slices), cpu_threads())
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(score_one, range(len(slices))))  # list(): re-raises a KPI's exception
        else:
            for k in range(len(slices)):
                score_one(k)
        return out

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _expected_core(self, frame: pd.DataFrame) -> np.ndarray | None:
        out = np.full(len(frame), np.nan)
        for _, sl in kpi_slices(frame):
            part = self._expected_kpi(frame.iloc[sl])
            if part is None:
                return None
            out[sl] = part
        return out

    def _expected_kpi(self, kpi: pd.DataFrame) -> np.ndarray | None:
        """One KPI's baseline for :meth:`Detector.expected`; None: the rule compares against none."""
        return None


def cpu_threads() -> int:
    """The CPU threads this task may use: torch's intra-op count, which ``pipeline.threads`` sets to the
    task's share of the machine (every core when nothing set it)."""
    import torch

    return max(1, int(torch.get_num_threads()))


def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict:
    """Numpy arrays (a tree ensemble's tables) as the state_dict of tensors that ``save`` writes."""
    import torch

    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def arrays_from_state(owner: str, state: dict, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a loaded state_dict; a missing one is an error naming it."""
    absent = [k for k in keys if k not in state]
    if absent:
        raise ValueError(f"{owner}: weights lack {absent}")
    return {k: state[k].cpu().numpy() for k in keys}


def values_of(frame: pd.DataFrame) -> np.ndarray:
    """The normalised values as float32, the dtype every network consumes."""
    return frame[VALUE].to_numpy(dtype=np.float32)


def observed_of(frame: pd.DataFrame) -> np.ndarray:
    """1.0 where the point was observed, 0.0 where it was interpolated: the weight of a loss term."""
    return (~frame[MISSING].to_numpy(dtype=bool)).astype(np.float32)


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """Point labels as int64 (absent or null labels count as normal)."""
    if LABEL not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    return frame[LABEL].fillna(0).to_numpy().astype(np.int64)
