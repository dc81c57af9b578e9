"""The MLflow model registry as kpiguard uses it: versions, the ``champion`` / ``challenger`` aliases,
promotion and rollback.

Registry scheme
---------------
- ``kpiguard-<detector>``: every new bundle of that detector is a new version.
- ``kpiguard`` (``mlflow.serving_model``): what is served. Its versions may wrap any detector: each is
  the validation-best detector of one pipeline run, registered from the same logged model, with
  tags ``kpiguard.detector``, ``kpiguard.detector_model`` and ``kpiguard.detector_version``.
- Aliases on every model: ``champion`` (served) and ``challenger`` (the latest that did not pass).

Every change of champion appends to the model's ``kpiguard.champion_history`` tag and records
``kpiguard.previous_champion``, so :func:`rollback` can go back one step at a time. Which version
becomes champion is the gate's decision (:mod:`pipeline.serving.gate`), or a person's
(``kpiguard promote`` / ``rollback``).
"""
from __future__ import annotations

import contextlib
import io
import json

import pandas as pd

from pipeline.errors import RegistryError

CHAMPION, CHALLENGER = "champion", "challenger"
TAG = "kpiguard."
HISTORY_TAG, PREVIOUS_TAG = TAG + "champion_history", TAG + "previous_champion"
HISTORY_KEEP = 100

__all__ = ["CHALLENGER", "CHAMPION", "RegistryError", "TAG", "alias_version", "champion_version", "promote",
           "register_version", "rollback", "set_champion"]


# -- registry ----------------------------------------------------------------------------------
def register_version(client, model: str, model_uri: str, run_id: str, tags: dict, role: str):
    """The version of ``model`` made from ``run_id``'s model, creating it if needed: (version, is_new)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model, description=f"kpiguard: {role}")
    existing = client.search_model_versions(f"name = '{model}' and run_id = '{run_id}'")
    if existing:
        return max(existing, key=lambda v: int(v.version)), False
    # MLflow prints "Registered model ... already exists" and "Created version N" to stderr for each one;
    # the register stage's summary says what was created, once.
    with contextlib.redirect_stderr(io.StringIO()):
        return mlflow.register_model(model_uri, model, tags=tags), True


def alias_version(client, model: str, alias: str):
    """The ModelVersion that holds ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException:
        return None


def champion_version(client, model: str):
    return alias_version(client, model, CHAMPION)


def set_champion(client, model: str, version: str, reason: str) -> dict:
    """Point ``champion`` at ``version``, recording the previous champion and the history."""
    version = str(version)
    client.get_model_version(model, version)  # fails clearly on an unknown version
    previous = champion_version(client, model)
    previous = str(previous.version) if previous is not None else None
    client.set_registered_model_alias(model, CHAMPION, version)
    history = [v for v in _history(client, model) if v != version] + [version]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))
    client.set_registered_model_tag(model, PREVIOUS_TAG, previous or "")
    client.set_model_version_tag(model, version, PREVIOUS_TAG, previous or "")
    client.set_model_version_tag(model, version, TAG + "promoted", f"{utc_now()}: {reason}")
    challenger = alias_version(client, model, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model, CHALLENGER)
    return {"model": model, "champion": version, "previous_champion": previous, "reason": reason}


def promote(client, model: str, version: str) -> dict:
    _require_model(client, model)
    try:
        client.get_model_version(model, str(version))
    except Exception:
        raise RegistryError(model, "version_exists", f"there is no version {version}") from None
    return set_champion(client, model, str(version), "manual promote")


def rollback(client, model: str) -> dict:
    """Move ``champion`` back to the champion before the current one."""
    _require_model(client, model)
    current = champion_version(client, model)
    if current is None:
        raise RegistryError(model, "has_champion", "no version holds the 'champion' alias; nothing to roll back")
    history, current_version = _history(client, model), str(current.version)
    earlier = [v for v in history if v != current_version]
    if not earlier:
        tagged = (current.tags or {}).get(PREVIOUS_TAG)
        if not tagged:
            raise RegistryError(model, "has_previous_champion",
                                f"version {current_version} is the first champion on record; nothing to roll back to")
        earlier = [tagged]
    target = earlier[-1]
    client.set_registered_model_alias(model, CHAMPION, target)
    # Cut the history back to the target, so a second rollback goes one further step back.
    kept = history[:len(history) - history[::-1].index(target)] if target in history else [target]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(kept))
    client.set_registered_model_tag(model, PREVIOUS_TAG, kept[-2] if len(kept) > 1 else "")
    client.set_model_version_tag(model, current_version, TAG + "rolled_back", f"{utc_now()}: champion -> {target}")
    return {"model": model, "champion": target, "rolled_back_from": current_version}


def _require_model(client, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException:
        raise RegistryError(model, "model_exists", "no such registered model; run the pipeline first") from None


def _history(client, model: str) -> list[str]:
    tags = client.get_registered_model(model).tags or {}
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG) or "[]")]
    except json.JSONDecodeError:
        return []


def utc_now() -> str:
    """Now, in UTC, to the second: the time stamp of every tag and description the registry records."""
    return pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
