"""Detector name -> class, imported lazily (Merlion-style factory): the one table of detectors.

:data:`DETECTORS` is the only list of detectors. Each entry names the detector's class, its config
class and whether it learns from labels; the modules follow from the name: the detector in
``models/<name>.py``, its config in ``models/configs/<name>.py`` (the paths dvc.yaml's ``train``
matrix depends on). ``get`` checks that a detector class agrees with its entry; tests/models/
test_registry.py checks the files, params.yaml and dvc.yaml against the table.

Importing this module imports no detector: ``get(name)`` imports only the one asked for, so a
pipeline stage that runs one detector never pays for (or depends on) the others, and
``config_class(name)`` imports only that detector's config (never torch).
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from models.base import CONFIG_FILE, Detector, DetectorConfig, TrainConfig, read_config
from models.checks import StateError


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """One registered detector: class ``detector`` of ``models.<name>``, class ``config`` of
    ``models.configs.<name>``, and whether it learns from labels (known without importing it, so
    that the ensemble's members are validated with params, torch-free)."""

    detector: str
    config: str
    supervised: bool


DETECTORS: dict[str, DetectorSpec] = {
    "windowed_gaussian": DetectorSpec("WindowedGaussian", "WindowedGaussianConfig", supervised=False),
    "diff_z": DetectorSpec("DiffZ", "DiffZConfig", supervised=False),
    "robust_zscore": DetectorSpec("RobustZScore", "RobustZScoreConfig", supervised=False),
    "isolation_forest": DetectorSpec("IsolationForest", "IsolationForestConfig", supervised=False),
    "seasonal_residual": DetectorSpec("SeasonalResidual", "SeasonalResidualConfig", supervised=False),
    "spectral_residual": DetectorSpec("SpectralResidual", "SpectralResidualConfig", supervised=False),
    "stacked_gbdt": DetectorSpec("StackedGbdt", "StackedGbdtConfig", supervised=True),
    "sequence_novelty": DetectorSpec("SequenceNovelty", "SequenceNoveltyConfig", supervised=False),
    "lstm_forecaster": DetectorSpec("LstmForecaster", "LstmForecasterConfig", supervised=False),
    "lstm_autoencoder": DetectorSpec("LstmAutoencoder", "LstmAutoencoderConfig", supervised=False),
    "conv1d_autoencoder": DetectorSpec("Conv1dAutoencoder", "Conv1dAutoencoderConfig", supervised=False),
    "dense_autoencoder": DetectorSpec("DenseAutoencoder", "DenseAutoencoderConfig", supervised=False),
    "cnn_classifier": DetectorSpec("CnnClassifier", "CnnClassifierConfig", supervised=True),
    "convlstm_classifier": DetectorSpec("ConvLstmClassifier", "ConvLstmClassifierConfig", supervised=True),
    "vae_lstm": DetectorSpec("VaeLstm", "VaeLstmConfig", supervised=False),
    "ensemble": DetectorSpec("Ensemble", "EnsembleConfig", supervised=False),
}


class UnknownDetector(KeyError, ValueError):
    """An unknown detector name (a KeyError for lookups, a ValueError for config validation)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def names() -> list[str]:
    return list(DETECTORS)


def spec(name: str) -> DetectorSpec:
    if name not in DETECTORS:
        raise UnknownDetector(f"unknown detector {name!r}; known detectors: {', '.join(DETECTORS)}")
    return DETECTORS[name]


def detector_module(name: str) -> str:
    """``models.<name>``: the module that defines the detector (file ``models/<name>.py``)."""
    spec(name)
    return f"models.{name}"


def config_module(name: str) -> str:
    """``models.configs.<name>``: the module that defines its config (file ``models/configs/<name>.py``)."""
    spec(name)
    return f"models.configs.{name}"


def _class(module: str, cls_name: str, name: str) -> type:
    cls = getattr(importlib.import_module(module), cls_name, None)
    if not isinstance(cls, type):
        raise RuntimeError(f"registry entry {name!r} names {cls_name}, which {module} does not define")
    return cls


def is_supervised(name: str) -> bool:
    """Whether the detector learns from labels, without importing it."""
    return spec(name).supervised


def supervised_names() -> list[str]:
    return [n for n, s in DETECTORS.items() if s.supervised]


def get(name: str) -> type[Detector]:
    entry = spec(name)
    cls = _class(detector_module(name), entry.detector, name)
    if cls.name != name:
        raise RuntimeError(f"registry entry {name!r} points to {cls.__name__}, whose name is {cls.name!r}")
    if cls.config_class is not config_class(name):
        raise RuntimeError(f"{name}: config_class is {cls.config_class.__name__}, the registry says "
                           f"{entry.config} ({config_module(name)})")
    if cls.supervised != entry.supervised:
        raise RuntimeError(f"{name}: supervised is {cls.supervised}, the registry says {entry.supervised}")
    return cls


def config_class(name: str) -> type[DetectorConfig]:
    """The detector's hyperparameter dataclass, without importing the detector (nor torch)."""
    return _class(config_module(name), spec(name).config, name)


def create(name: str, config: DetectorConfig | dict | None = None,
           train_config: TrainConfig | dict | None = None) -> Detector:
    return get(name)(config, train_config)


def load(directory: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved with ``Detector.save``; the detector's name is read from its config.json."""
    name = read_config(directory).get("detector")
    if not isinstance(name, str) or name not in DETECTORS:
        raise StateError("detector", f"names no known detector ({name!r}); known: {', '.join(DETECTORS)}", CONFIG_FILE)
    return get(name).load(directory, device=device)
