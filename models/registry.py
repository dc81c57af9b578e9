"""Detector name -> class, imported lazily (Merlion-style factory).

Importing this module imports no detector: ``get(name)`` imports only the one asked for, so a
pipeline stage that runs one detector never pays for (or depends on) the others.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from models.base import CONFIG_FILE, Detector, DetectorConfig, TrainConfig

DETECTORS: dict[str, str] = {
    "windowed_gaussian": "models.windowed_gaussian:WindowedGaussian",
    "diff_z": "models.diff_z:DiffZ",
    "robust_zscore": "models.robust_zscore:RobustZScore",
    "isolation_forest": "models.isolation_forest:IsolationForest",
    "seasonal_residual": "models.seasonal_residual:SeasonalResidual",
    "spectral_residual": "models.spectral_residual:SpectralResidual",
    "stacked_gbdt": "models.stacked_gbdt:StackedGbdt",
    "sequence_novelty": "models.sequence_novelty:SequenceNovelty",
    "lstm_forecaster": "models.lstm_forecaster:LstmForecaster",
    "lstm_autoencoder": "models.lstm_autoencoder:LstmAutoencoder",
    "conv1d_autoencoder": "models.conv1d_autoencoder:Conv1dAutoencoder",
    "dense_autoencoder": "models.dense_autoencoder:DenseAutoencoder",
    "cnn_classifier": "models.cnn_classifier:CnnClassifier",
    "convlstm_classifier": "models.convlstm_classifier:ConvLstmClassifier",
    "vae_lstm": "models.vae_lstm:VaeLstm",
    "ensemble": "models.ensemble:Ensemble",
}


class UnknownDetector(KeyError, ValueError):
    """An unknown detector name (a KeyError for lookups, a ValueError for config validation)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def names() -> list[str]:
    return list(DETECTORS)


def _check_name(name: str) -> None:
    if name not in DETECTORS:
        raise UnknownDetector(f"unknown detector {name!r}; known detectors: {', '.join(DETECTORS)}")


def get(name: str) -> type[Detector]:
    _check_name(name)
    module, cls_name = DETECTORS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if cls.name != name:
        raise RuntimeError(f"registry entry {name!r} points to {cls.__name__}, whose name is {cls.name!r}")
    if cls.config_class is not config_class(name):
        raise RuntimeError(f"{name}: config_class is {cls.config_class.__name__}, models.configs.CONFIGS says "
                           f"{config_class(name).__name__}")
    from models.configs import SUPERVISED

    if cls.supervised != (name in SUPERVISED):
        raise RuntimeError(f"{name}: supervised is {cls.supervised}, models.configs.SUPERVISED says otherwise")
    return cls


def config_class(name: str) -> type[DetectorConfig]:
    """The detector's hyperparameter dataclass, without importing the detector (nor torch)."""
    _check_name(name)
    from models.configs import CONFIGS

    return CONFIGS[name]


def create(name: str, config: DetectorConfig | dict | None = None,
           train_config: TrainConfig | dict | None = None) -> Detector:
    return get(name)(config, train_config)


def load(directory: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved with ``Detector.save``; the detector's name is read from its config.json."""
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {directory} a saved detector?")
    name = json.loads(path.read_text()).get("detector")
    return get(name).load(directory, device=device)
