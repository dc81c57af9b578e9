"""train stage: fit one registered detector on the windows stage's train/val splits.

Writes ``<paths.artifacts>/<name>/`` (the detector's ``config.json`` + ``weights.pt``, and the
``norm_stats.json`` it was trained under) and ``<paths.train_reports>/<name>.json`` (status, timings:
``train_seconds`` and the fit's ``started_at`` / ``finished_at`` in UTC, per-epoch losses) as DVC metrics. A supervised detector on unlabelled data is recorded as skipped,
not failed: the run goes on.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from models import registry
from models.base import SkipDetector, TrainConfig
from pipeline import threads
from pipeline.io.outputs import replace_dir_atomic, write_json_atomic
from pipeline.params import Params

log = logging.getLogger(__name__)


def train_config(params: Params, progress: bool = True) -> TrainConfig:
    """``train:`` as the detectors' TrainConfig, with ``train.budget``'s caps applied: its epochs cap
    ``train.max_epochs``, its sample caps become the TrainConfig's."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in params.train.model_dump().items() if k in fields}
    budget = params.train.budget
    if budget.max_epochs is not None:
        values["max_epochs"] = min(values["max_epochs"], budget.max_epochs)
    values.update(max_train_windows=budget.max_train_windows, max_val_windows=budget.max_val_windows)
    return TrainConfig(**values, progress=progress)


def fit_detector(name: str, params: Params, train: pd.DataFrame, val: pd.DataFrame | None,
                 progress: bool = True):
    """Create and fit one detector. Returns (detector or None, report)."""
    detector = registry.create(name, params.detector_config(name), train_config(params, progress))
    started_at, started = time.time(), time.perf_counter()
    try:
        detector.fit(train, val)
    except SkipDetector as exc:
        log.warning("%s", exc)
        return None, {"detector": name, "status": "skipped", "reason": str(exc)}
    seconds, finished_at = time.perf_counter() - started, time.time()
    return detector, {
        "detector": name,
        "status": "ok",
        "train_seconds": round(seconds, 3),
        # When the fit ran (UTC), so the register stage's MLflow run spans the training, not its own logging.
        "started_at": _utc(started_at), "finished_at": _utc(max(finished_at, started_at + seconds)),
        "device": str(getattr(detector, "device", "cpu")),
        **threads.current(),
        "epochs": len(detector.history),
        "budget": params.train.budget.model_dump(),  # the caps it trained under (train.budget)
        "history": detector.history,
        "best_val_loss": min((h["val_loss"] for h in detector.history if h.get("val_loss") is not None),
                             default=None),
        "config": detector.config.to_dict(),
    }


def _utc(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).isoformat(timespec="milliseconds")


def run(params: Params, name: str, progress: bool = True) -> dict:
    registry.get(name)  # raises UnknownDetector: the name becomes a directory below, so it must be a registered one
    windows = Path(params.paths.windows)
    train = pd.read_parquet(windows / "train.parquet")
    val = pd.read_parquet(windows / "val.parquet")
    try:
        detector, report = fit_detector(name, params, train, val if len(val) else None, progress)
    except Exception as exc:
        # Recorded before re-raising, so evaluate and register see this detector as failed, not a stale
        # model. The previous model's files stay beside the record (nothing is lost), unused while it says failed.
        report = {"detector": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        target = Path(params.paths.artifacts) / name

        def record(tmp: Path) -> None:
            if target.is_dir():
                shutil.copytree(target, tmp, dirs_exist_ok=True)
            write_json_atomic(tmp / "status.json", report)

        replace_dir_atomic(target, record)
        write_json_atomic(Path(params.paths.train_reports) / f"{name}.json", report)
        raise

    def write(tmp: Path) -> None:
        if detector is not None:
            detector.save(tmp)
        shutil.copy(windows / "norm_stats.json", tmp / "norm_stats.json")
        write_json_atomic(tmp / "status.json", {k: report[k] for k in ("detector", "status") if k in report}
                          | ({"reason": report["reason"]} if "reason" in report else {}))

    replace_dir_atomic(Path(params.paths.artifacts) / name, write)
    write_json_atomic(Path(params.paths.train_reports) / f"{name}.json", report)
    return report
