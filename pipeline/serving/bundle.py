"""One servable model format: a *bundle* directory, logged to MLflow as a pyfunc model.

A bundle holds everything needed to turn raw KPI rows into alarms, and nothing pickled:

=====================  =====================================================================
``detector/``          the detector's ``config.json`` + ``weights.pt`` (a state_dict, loaded with
                       ``torch.load(weights_only=True)``)
``norm_stats.json``    per-KPI median/MAD and sampling interval, from the train split
``calibration.json``   the score calibration fitted on train + validation (:mod:`models.calibration`)
``threshold.json``     the threshold on calibrated scores, fitted on validation (:mod:`pipeline.eval.thresholds`):
                       per-KPI values plus the global one for KPIs it has never seen
``bundle.json``        detector name, digest of the above, ``clip_sigma``, and where it came from
=====================  =====================================================================

:class:`KpiguardModel` is the MLflow ``PythonModel`` around a bundle, logged as "models from code"
(``pipeline/serving/pyfunc_model.py``): nothing is pickled, and ``mlflow.pyfunc.load_model(
"models:/kpiguard@champion")`` in a fresh process needs only the project installed.

Input: a DataFrame of ``kpi_id`` (str), ``timestamp`` (UTC, timezone-naive in the MLflow
signature, which cannot carry a timezone; :func:`predict` accepts either), ``value`` (float).
Output: one row per input row: ``kpi_id``, ``timestamp``, ``value``, ``raw_score`` (the detector's),
``score`` (calibrated: surprise, ``-log10`` of a tail probability), ``threshold`` (the KPI's, on the
calibrated scale), ``is_anomaly`` (``score >= threshold``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models import registry
from models.base import Detector
from models.calibration import Calibration, NoCalibration
from models.frame import CLIPPED, KPI_ID, MISSING, RAW_VALUE, TIMESTAMP, VALUE, kpi_slices
from pipeline.data.contract import to_canonical
from pipeline.data.prep import DEFAULT_CLIP_SIGMA, NormStats, fit_norm, load_norm_stats, prepare
from pipeline.eval.thresholds import Threshold

log = logging.getLogger(__name__)

RAW_SCORE, SCORE, THRESHOLD, IS_ANOMALY = "raw_score", "score", "threshold", "is_anomaly"
OUTPUT_COLUMNS = (KPI_ID, TIMESTAMP, VALUE, RAW_SCORE, SCORE, THRESHOLD, IS_ANOMALY)


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


class Bundle:
    """A loaded bundle: scores raw KPI rows."""

    def __init__(self, detector: Detector, norm: dict[str, NormStats], calibration: Calibration,
                 threshold: Threshold, meta: dict):
        self.detector, self.norm, self.calibration, self.threshold, self.meta = (
            detector, norm, calibration, threshold, meta)
        # windows.clip_sigma the model was trained under (bundle.json); older bundles: the default
        self.clip_sigma = float(meta.get("clip_sigma") or DEFAULT_CLIP_SIGMA)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> "Bundle":
        d = Path(directory)
        # Bundles logged before calibration existed score raw, as they did when they were gated.
        calibration = (Calibration.from_dict(json.loads((d / "calibration.json").read_text()))
                       if (d / "calibration.json").exists() else NoCalibration().fit([], []))
        return cls(registry.load(d / "detector", device=device), load_norm_stats(d / "norm_stats.json"),
                   calibration, Threshold.from_dict(json.loads((d / "threshold.json").read_text())),
                   json.loads((d / "bundle.json").read_text()))

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Score raw rows of any number of KPIs; each KPI should carry its detector's context first."""
        frame = to_canonical(rows[[KPI_ID, TIMESTAMP, VALUE]], "model input")
        if frame.empty:
            return _empty_output()
        prepared = prepare(frame, self.norm, self.clip_sigma)
        if prepared.attrs.get("unseen_kpis"):
            log.warning("KPIs without training statistics, normalised by their own: %s",
                        ", ".join(prepared.attrs["unseen_kpis"]))
        raw = self.detector.score(prepared)
        ids = prepared[KPI_ID].to_numpy()
        scores = self.calibration.transform(raw, ids)  # the same fitted transform as the evaluate stage
        per_kpi = {str(k): self.threshold.value_for(k) for k in pd.unique(ids)}
        thresholds = prepared[KPI_ID].astype(str).map(per_kpi).astype("float64")
        # An extreme value (normalised beyond clip_sigma) is always an alarm. The detector saw a local
        # median in its place (prep.damp_clipped), so its own score says nothing: it scores at least its
        # KPI's threshold, and the report does not rank it below the threshold it is flagged over.
        clipped = prepared[CLIPPED].to_numpy(dtype=bool)
        scores = np.where(clipped, np.fmax(scores, thresholds.to_numpy()), scores)
        alarms = self.threshold.apply(scores, ids) | clipped
        out = pd.DataFrame({KPI_ID: prepared[KPI_ID].astype(str), TIMESTAMP: prepared[TIMESTAMP],
                            VALUE: prepared[RAW_VALUE], RAW_SCORE: raw, SCORE: scores,
                            THRESHOLD: thresholds, IS_ANOMALY: alarms})
        # Grid points that were interpolated into gaps were never observed: they get no output row.
        return out[~prepared[MISSING].to_numpy()].reset_index(drop=True)


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
            value[rows], clipped[rows] = stats.normalise(raw_values[rows], self.clip_sigma)
        frame[VALUE], frame[CLIPPED] = value, clipped
        raw = np.asarray(self.detector.score(frame), dtype=np.float64)
        return self.calibration.transform(raw, frame[KPI_ID].to_numpy())


def _empty_output() -> pd.DataFrame:
    return pd.DataFrame({KPI_ID: pd.Series(dtype="str"), TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]"),
                         VALUE: pd.Series(dtype="float64"), RAW_SCORE: pd.Series(dtype="float64"),
                         SCORE: pd.Series(dtype="float64"),
                         THRESHOLD: pd.Series(dtype="float64"), IS_ANOMALY: pd.Series(dtype="bool")})


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
