"""Artifact locations relative to the working directory, for the local MLflow store.

MLflow stores an absolute ``file://`` path for every experiment, run and logged model of a local store
(it resolves a relative one when the experiment is created), so a copied or moved checkout kept pointing
at the original's ``mlartifacts/``: the UI and ``models:/`` loads broke once that was gone. kpiguard
creates its local experiments at ``kpiguard-local:mlartifacts`` instead: this repository, registered
with MLflow under that scheme (the ``mlflow.artifact_repository`` entry point in pyproject.toml, so
``mlflow ui`` finds it too), keeps the path relative and resolves it against the working directory,
as ``sqlite:///mlflow.db`` itself is. ``mlflow.db`` and ``mlartifacts/`` copied together work
wherever they land. An ``mlflow server`` (``MLFLOW_TRACKING_URI=http://...``) keeps its own locations.
"""
from __future__ import annotations

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

SCHEME = "kpiguard-local"


def location(directory: str) -> str:
    """The artifact location of a directory relative to the working directory."""
    return f"{SCHEME}:{directory}"


class RelativeArtifactRepository(LocalArtifactRepository):
    """``kpiguard-local:<relative path>``: a local artifact directory, resolved against the working directory."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
        relative = artifact_uri[len(SCHEME) + 1:]
        super().__init__(relative, tracking_uri, registry_uri)
        self.artifact_uri = artifact_uri  # what MLflow joins artifact paths onto: stays relative
