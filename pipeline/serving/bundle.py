"""One servable model format: a *bundle* directory, logged to MLflow as a pyfunc model.

A bundle holds everything needed to turn raw KPI rows into alarms, and nothing pickled:

=====================  =====================================================================
``detector/``          the detector's ``config.json`` + ``weights.pt`` (a state_dict, loaded with
                       ``torch.load(weights_only=True)``)
``norm_stats.json``    per-KPI median/MAD and sampling interval, from the train split
``calibration.json``   the score calibration fitted on train + validation (:mod:`models.calibration`)
``threshold.json``     the threshold on calibrated scores, fitted on validation (:mod:`pipeline.eval.thresholds`):
                       per-KPI values plus the global one for KPIs it has never seen
``bundle.json``        detector name, digest of the above, ``clip_sigma``, where it came from, and
                       ``training_range`` (first and last timestamp of the train + validation data
                       the detector, calibration and threshold were fitted on; absent in older bundles)
=====================  =====================================================================

:meth:`Bundle.load` checks every part before the bundle serves, and :meth:`Bundle.predict` guards the
model's part of scoring: a bundle that cannot serve raises :class:`BundleError` (rule ``model_loadable``,
exit 2 from the CLI) naming the file and the field, never a traceback, a hang or unchecked scores.

:class:`KpiguardModel` is the MLflow ``PythonModel`` around a bundle, logged as "models from code"
(``pipeline/serving/pyfunc_model.py``): nothing is pickled, and ``mlflow.pyfunc.load_model(
"models:/kpiguard@champion")`` in a fresh process needs only the project installed.

Input: a DataFrame of ``kpi_id`` (str), ``timestamp`` (UTC, timezone-naive in the MLflow
signature, which cannot carry a timezone; :func:`predict` accepts either), ``value`` (float).
Output: one row per input row: ``kpi_id``, ``timestamp``, ``value``, ``expected``, ``expected_low``,
``expected_high`` (what the model expected there and the band of usual values, in the KPI's units; NaN
where it has too little history to say: :mod:`pipeline.serving.expected`), ``raw_score`` (the
detector's), ``score`` (calibrated: surprise, ``-log10`` of a tail probability), ``threshold`` (the
KPI's, on the calibrated scale), ``is_anomaly`` (``score >= threshold``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from models import registry
from models.base import Detector
from models.calibration import Calibration, NoCalibration
from models.checks import StateError, mapping, number, read_json_object
from models.frame import CLIPPED, KPI_ID, MISSING, RAW_VALUE, TIMESTAMP, VALUE, kpi_slices
from pipeline.data.contract import to_canonical
from pipeline.data.prep import DEFAULT_CLIP_SIGMA, NormStats, fit_norm, normalised, prepare
from pipeline.errors import KpiguardError
from pipeline.eval.thresholds import Threshold
from pipeline.serving.expected import expected_band

log = logging.getLogger(__name__)

RAW_SCORE, SCORE, THRESHOLD, IS_ANOMALY = "raw_score", "score", "threshold", "is_anomaly"
EXPECTED, EXPECTED_LOW, EXPECTED_HIGH = "expected", "expected_low", "expected_high"
OUTPUT_COLUMNS = (KPI_ID, TIMESTAMP, VALUE, EXPECTED, EXPECTED_LOW, EXPECTED_HIGH, RAW_SCORE, SCORE, THRESHOLD,
                  IS_ANOMALY)


# -- bundles -----------------------------------------------------------------------------------
def write_bundle(out: Path, detector_dir: Path, threshold: dict, calibration: dict,
                 clip_sigma: float = DEFAULT_CLIP_SIGMA, info: dict | None = None) -> dict:
    """Assemble a bundle from a trained detector directory (train stage output), its fitted calibration
    and its threshold (both from the evaluate stage), to score under ``clip_sigma`` (the
    ``windows.clip_sigma`` it was trained under). ``info``: more fields for ``bundle.json``."""
    out = Path(out)
    shutil.copytree(detector_dir, out / "detector", ignore=shutil.ignore_patterns("norm_stats.json", "status.json"))
    shutil.copy(Path(detector_dir) / "norm_stats.json", out / "norm_stats.json")
    (out / "calibration.json").write_text(json.dumps(calibration, sort_keys=True) + "\n")
    (out / "threshold.json").write_text(json.dumps(threshold, indent=2, sort_keys=True) + "\n")
    meta = {**(info or {}), "detector": json.loads((out / "detector" / "config.json").read_text())["detector"],
            "digest": bundle_digest(out, clip_sigma), "clip_sigma": float(clip_sigma)}
    (out / "bundle.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def bundle_digest(directory: Path, clip_sigma: float) -> str:
    """sha256 over what decides the model's output: equal digests score identically.

    The detector's config, fitted scalars and tensors, the normalisation, the calibration, the threshold
    and ``clip_sigma`` (:meth:`Bundle.predict` clips at it and flags what it clipped); not training
    timings or the exact bytes of the weights file.
    """
    import torch

    directory = Path(directory)
    meta = json.loads((directory / "detector" / "config.json").read_text())
    h = hashlib.sha256(json.dumps({k: meta.get(k) for k in ("detector", "config", "fitted")}, sort_keys=True).encode())
    state = torch.load(directory / "detector" / "weights.pt", weights_only=True, map_location="cpu")
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    for name in ("norm_stats.json", "calibration.json", "threshold.json"):
        if (directory / name).exists():
            h.update(json.dumps(json.loads((directory / name).read_text()), sort_keys=True).encode())
    h.update(json.dumps({"clip_sigma": float(clip_sigma)}).encode())
    return h.hexdigest()


class BundleError(KpiguardError):
    """A bundle that cannot serve (rule ``model_loadable``): names the bundle, the file and the field."""

    def __init__(self, bundle: str, file: str, detail: str, field: str | None = None):
        self.bundle, self.file, self.field = bundle, file, field
        super().__init__(f"bundle {bundle}, file {file}", "model_loadable",
                         f"field '{field}': {detail}" if field else detail)


@contextlib.contextmanager
def _part(bundle: str, file: str, what: str = "does not load") -> Iterator[None]:
    """What goes wrong while reading (or scoring with) one file of a bundle becomes one :class:`BundleError`.

    The checks raise :class:`models.checks.StateError` naming the field. Anything else that escapes is
    caught too, as the last line of defence: a bundle is data from the registry, and no byte of it may
    turn into a traceback (or into scores nobody checked) instead of a refusal naming the file. Errors
    about the rows being scored (:class:`pipeline.errors.KpiguardError`) pass through.
    """
    try:
        yield
    except KpiguardError:
        raise
    except StateError as exc:
        inner = f"{file}{exc.file}" if file.endswith("/") and exc.file else file  # detector/ + weights.pt
        raise BundleError(bundle, inner, exc.problem, exc.field) from None
    except Exception as exc:  # noqa: BLE001 - see the docstring: the last line of defence
        raise BundleError(bundle, file, f"{what} ({type(exc).__name__}: {exc})") from None


def _read(directory: Path, name: str, bundle: str) -> dict:
    with _part(bundle, name):
        return read_json_object(directory / name)


MAX_INTERVAL_S = 1e9  # ~32 years: a grid step pandas can still add to a timestamp


def _norm_stats(raw: dict) -> dict[str, NormStats]:
    """``norm_stats.json``: per KPI a finite ``center``, a finite ``scale`` above 0 and a sampling
    ``interval_s`` that is a time step at all (1 ns to :data:`MAX_INTERVAL_S`; how many grid points an
    interval makes of the input rows is bounded where the grid is built)."""
    out = {}
    for kpi, stats in raw.items():
        stats = mapping(stats, kpi)
        if set(stats) != {"center", "scale", "interval_s"}:
            raise StateError(kpi, f"must hold exactly center, scale and interval_s, got {sorted(stats)}")
        interval = number(stats["interval_s"], f"{kpi}.interval_s", minimum=1e-9)
        if interval > MAX_INTERVAL_S:
            raise StateError(f"{kpi}.interval_s", f"must be at most {MAX_INTERVAL_S:g} s, got {interval!r}")
        out[str(kpi)] = NormStats(number(stats["center"], f"{kpi}.center"),
                                  number(stats["scale"], f"{kpi}.scale", positive=True), interval)
    return out


def _calibration(raw: dict) -> Calibration:
    calibration = Calibration.from_dict(raw)  # checks each fitted state (models.calibration)
    if not isinstance(calibration, NoCalibration) and not calibration.fitted:
        raise StateError("pooled", "is missing: the calibration was never fitted")
    return calibration


def _threshold(raw: dict) -> Threshold:
    threshold = Threshold.from_dict(raw)
    if threshold.global_value is None:
        raise StateError("global_value", "is missing: the threshold was never fitted")
    # A NaN threshold never alarms, -inf always does: both switch alarms off or on for every KPI.
    number(threshold.global_value, "global_value")
    for kpi, value in threshold.per_kpi.items():
        number(value, f"per_kpi.{kpi}")
    return threshold


def data_range(timestamps) -> dict[str, str] | None:
    """``bundle.json``'s ``training_range``: the first and last of ``timestamps`` as ISO-8601 UTC; None
    for none."""
    ts = pd.to_datetime(pd.Series(timestamps), utc=True).dropna()
    if ts.empty:
        return None
    return {"start": ts.min().isoformat(), "end": ts.max().isoformat()}


def _training_range(meta: dict) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """``training_range`` of ``bundle.json`` as UTC timestamps; None for a bundle written before it was
    recorded (it scores as before: the scorer only cannot say whether a day is inside the range)."""
    raw = meta.get("training_range")
    if raw is None:
        return None
    raw = mapping(raw, "training_range")
    if set(raw) != {"start", "end"}:
        raise StateError("training_range", f"must hold exactly start and end, got {sorted(raw)}")
    bounds = []
    for key in ("start", "end"):
        try:
            if not isinstance(raw[key], str):
                raise TypeError(type(raw[key]).__name__)
            ts = pd.Timestamp(raw[key])
            bounds.append(ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise StateError(f"training_range.{key}", f"must be an ISO-8601 timestamp, got {raw[key]!r} ({exc})") from None
        if pd.isna(bounds[-1]):
            raise StateError(f"training_range.{key}", f"must be a timestamp, got {raw[key]!r}")
    if bounds[1] < bounds[0]:
        raise StateError("training_range", f"ends ({raw['end']}) before it starts ({raw['start']})")
    return bounds[0], bounds[1]


def _clip_sigma(meta: dict) -> float:
    # Bundles from before clip_sigma was recorded clip at the default, as they did when they were gated.
    value = meta.get("clip_sigma")
    return DEFAULT_CLIP_SIGMA if value is None else number(value, "clip_sigma", positive=True)


class Bundle:
    """A loaded bundle: scores raw KPI rows."""

    def __init__(self, detector: Detector, norm: dict[str, NormStats], calibration: Calibration,
                 threshold: Threshold, meta: dict, label: str = "(in memory)"):
        self.detector, self.norm, self.calibration, self.threshold, self.meta = (
            detector, norm, calibration, threshold, meta)
        # windows.clip_sigma the model was trained under (bundle.json); older bundles: the default
        self.clip_sigma = float(meta.get("clip_sigma") or DEFAULT_CLIP_SIGMA)
        self.label = label  # how errors name the bundle: its directory, or the registered version
        # (start, end) of the data the model was fitted on (bundle.json); None: an older bundle
        self.training_range = _training_range(meta)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None, label: str | None = None) -> "Bundle":
        """Read and check every part of a bundle before it serves (see docs/deploy.md, "Who can change what
        is served"): JSON objects with finite numbers, positive scales and ``clip_sigma``, tensors read with
        ``torch.load(weights_only=True)``, every floating one finite, shapes as the detector's config says,
        trees whose links are in range and acyclic. Anything else raises :class:`BundleError` (rule
        ``model_loadable``) naming ``label`` (default: the directory), the file and the field."""
        d = Path(directory)
        label = label or str(d)
        meta = _read(d, "bundle.json", label)
        with _part(label, "bundle.json"):
            clip_sigma = _clip_sigma(meta)
            _training_range(meta)
        with _part(label, "detector/"):
            detector = registry.load(d / "detector", device=device)
        with _part(label, "bundle.json"):
            if meta.get("detector") != detector.name:
                raise StateError("detector", f"names {meta.get('detector')!r}, the detector/ directory holds "
                                             f"{detector.name!r}")
        with _part(label, "norm_stats.json"):
            norm = _norm_stats(_read(d, "norm_stats.json", label))
        # Bundles logged before calibration existed score raw, as they did when they were gated.
        if (d / "calibration.json").exists():
            raw_calibration = _read(d, "calibration.json", label)
            with _part(label, "calibration.json"):
                calibration = _calibration(raw_calibration)
        else:
            calibration = NoCalibration().fit([], [])
        raw_threshold = _read(d, "threshold.json", label)
        with _part(label, "threshold.json"):
            threshold = _threshold(raw_threshold)
        return cls(detector, norm, calibration, threshold, {**meta, "clip_sigma": clip_sigma}, label)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Score raw rows of any number of KPIs; each KPI should carry its detector's context first.

        An error of the model while scoring (of its detector, calibration or threshold: the input rows
        were checked before) is a :class:`BundleError` naming the part, never a traceback."""
        # Only the input columns (a label is not the model's business); an absent one: the contract's error.
        frame = to_canonical(rows[[c for c in (KPI_ID, TIMESTAMP, VALUE) if c in rows.columns]], "model input")
        if frame.empty:
            return _empty_output()
        prepared = prepare(frame, self.norm, self.clip_sigma)
        if prepared.attrs.get("unseen_kpis"):
            log.warning("KPIs without training statistics, normalised by their own: %s",
                        ", ".join(prepared.attrs["unseen_kpis"]))
        ids = prepared[KPI_ID].to_numpy()
        with _part(self.label, "detector/ (config.json, weights.pt)", "fails while scoring"):
            raw = self.detector.score(prepared)
            baseline = self.detector.expected(prepared)
        with _part(self.label, "calibration.json", "fails while scoring"):
            scores = self.calibration.transform(raw, ids)  # the same fitted transform as the evaluate stage
            bad = int((~np.isfinite(scores)).sum())
            if bad:
                raise StateError(None, f"turns {bad} finite raw score(s) into NaN or inf: no threshold could "
                                       "judge them")
        with _part(self.label, "threshold.json", "fails while scoring"):
            per_kpi = {str(k): self.threshold.value_for(k) for k in pd.unique(ids)}
            thresholds = prepared[KPI_ID].astype(str).map(per_kpi).astype("float64")
            # An extreme value (normalised beyond clip_sigma) is always an alarm. The detector saw a local
            # median in its place (prep.damp_clipped), so its own score says nothing: it scores at least its
            # KPI's threshold, and the report does not rank it below the threshold it is flagged over.
            clipped = prepared[CLIPPED].to_numpy(dtype=bool)
            scores = np.where(clipped, np.fmax(scores, thresholds.to_numpy()), scores)
            alarms = self.threshold.apply(scores, ids) | clipped
        expected, low, high = self.denormalised(prepared, expected_band(prepared, alarms, baseline))
        out = pd.DataFrame({KPI_ID: prepared[KPI_ID].astype(str), TIMESTAMP: prepared[TIMESTAMP],
                            VALUE: prepared[RAW_VALUE], EXPECTED: expected, EXPECTED_LOW: low, EXPECTED_HIGH: high,
                            RAW_SCORE: raw, SCORE: scores, THRESHOLD: thresholds, IS_ANOMALY: alarms})
        # Grid points that were interpolated into gaps were never observed: they get no output row.
        return out[~prepared[MISSING].to_numpy()].reset_index(drop=True)

    def denormalised(self, prepared: pd.DataFrame, arrays) -> list[np.ndarray]:
        """Normalised arrays over a prepared frame's rows back in each KPI's units, with the statistics
        its rows were normalised with (this bundle's; a KPI it never saw: its own, as :func:`prepare` fits)."""
        out = [np.asarray(a, dtype=np.float64).copy() for a in arrays]
        raw_values, missing = prepared[RAW_VALUE].to_numpy(dtype=np.float64), prepared[MISSING].to_numpy(dtype=bool)
        for kpi, rows in kpi_slices(prepared):
            stats = self.norm.get(kpi) or fit_norm(raw_values[rows], missing[rows], 0.0)
            for a in out:
                a[rows] = a[rows] * stats.scale + stats.center
        return out

    def score_prepared(self, prepared: pd.DataFrame) -> np.ndarray:
        """Calibrated scores of every row of a prepared frame (the windows stage's grids, per KPI in time
        order), computed as the evaluate stage computes them: the same rows, gaps and context, so a
        version measured here gets the very figure evaluate reported for it. Values are normalised
        again with this bundle's statistics (an older version was trained under other ones; a KPI it
        never saw by its own, as :meth:`predict` does)."""
        frame = prepared.drop(columns="split", errors="ignore").copy()
        value, clipped = frame[VALUE].to_numpy(dtype=np.float64).copy(), frame[CLIPPED].to_numpy(dtype=bool).copy()
        raw_values, missing = frame[RAW_VALUE].to_numpy(dtype=np.float64), frame[MISSING].to_numpy(dtype=bool)
        for kpi, rows in kpi_slices(frame):
            stats = self.norm.get(kpi) or fit_norm(raw_values[rows], missing[rows], 0.0)
            value[rows], clipped[rows] = normalised(frame.iloc[rows], stats, self.clip_sigma)  # as prepare() does
        frame[VALUE], frame[CLIPPED] = value, clipped
        raw = np.asarray(self.detector.score(frame), dtype=np.float64)
        return self.calibration.transform(raw, frame[KPI_ID].to_numpy())


def _empty_output() -> pd.DataFrame:
    return pd.DataFrame({KPI_ID: pd.Series(dtype="str"), TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]"),
                         **{c: pd.Series(dtype="float64") for c in (VALUE, EXPECTED, EXPECTED_LOW, EXPECTED_HIGH,
                                                                    RAW_SCORE, SCORE, THRESHOLD)},
                         IS_ANOMALY: pd.Series(dtype="bool")})


# -- MLflow pyfunc -----------------------------------------------------------------------------
try:
    import mlflow.pyfunc

    _PythonModel: Any = mlflow.pyfunc.PythonModel
except ImportError:  # models/ and bundles work without MLflow; only logging needs it
    _PythonModel = object


class BundleModel:
    """A bundle behind the pyfunc's ``predict(model_input)``: what kpiguard's scorer and gate use.

    Loaded by kpiguard's own installed code (:meth:`Bundle.load`: JSON, a ``weights_only`` state_dict),
    never by ``mlflow.pyfunc.load_model``, which would execute whatever code is stored with a model
    version (see :mod:`pipeline.serving.store`).
    """

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        out = self.bundle.predict(model_input)  # the data contract reads naive timestamps as UTC
        out[TIMESTAMP] = out[TIMESTAMP].dt.tz_convert(None)  # naive UTC: the signature's convention
        return out


class KpiguardModel(_PythonModel):
    """MLflow pyfunc wrapper: the bundle travels as the ``bundle`` artifact."""

    def load_context(self, context) -> None:
        self.model = BundleModel(Bundle.load(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict(model_input)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", KPI_ID), ColSpec("datetime", TIMESTAMP), ColSpec("double", VALUE)]),
        outputs=Schema([ColSpec("string", KPI_ID), ColSpec("datetime", TIMESTAMP), ColSpec("double", VALUE),
                        ColSpec("double", EXPECTED), ColSpec("double", EXPECTED_LOW), ColSpec("double", EXPECTED_HIGH),
                        ColSpec("double", RAW_SCORE), ColSpec("double", SCORE), ColSpec("double", THRESHOLD), ColSpec("boolean", IS_ANOMALY)]))


def pip_requirements() -> list[str]:
    """What a serving environment needs; kpiguard itself is installed from the project."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "numpy", "pandas", "mlflow", "pyarrow")]


def log_bundle(bundle_dir: Path, name: str = "model", input_example: pd.DataFrame | None = None):
    """Log a bundle as a pyfunc model into the active MLflow run; returns MLflow's ModelInfo.

    ``input_example``: a few rows in the signature's input form (:func:`to_model_input`), shown with the
    model in the MLflow UI and used by ``mlflow models predict`` / serving as the request example."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # The signature is explicit; without an example MLflow would advise one, once per model.
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        return mlflow.pyfunc.log_model(name=name, python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                       artifacts={"bundle": str(bundle_dir)}, signature=signature(),
                                       input_example=input_example, pip_requirements=pip_requirements())


def to_model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical rows -> the pyfunc signature's input (timezone-naive UTC timestamps)."""
    out = frame[[KPI_ID, TIMESTAMP, VALUE]].copy()
    out[KPI_ID] = out[KPI_ID].astype(str)
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True).dt.tz_localize(None)
    out[VALUE] = out[VALUE].astype("float64")
    return out


def from_model_output(out: pd.DataFrame) -> pd.DataFrame:
    """The pyfunc's output back to the canonical convention (timezone-aware UTC)."""
    out = out.copy()
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP]).dt.tz_localize("UTC")
    out[IS_ANOMALY] = out[IS_ANOMALY].astype(bool)
    return out[list(OUTPUT_COLUMNS)]


def predict_with(model, rows: pd.DataFrame) -> pd.DataFrame:
    """Score canonical rows with a loaded pyfunc model; returns canonical output rows."""
    if rows.empty:
        return _empty_output()
    return from_model_output(model.predict(to_model_input(rows)))


def observed_rows(prepared: pd.DataFrame) -> pd.DataFrame:
    """Prepared (windows stage) rows back to raw input rows: observed points in original units."""
    part = prepared.loc[~prepared[MISSING].to_numpy(), [KPI_ID, TIMESTAMP, RAW_VALUE]]
    return part.rename(columns={RAW_VALUE: VALUE}).reset_index(drop=True)
