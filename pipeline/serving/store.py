"""Load a registered kpiguard model without executing anything stored with it.

A kpiguard model version is an MLflow pyfunc logged as "models from code": ``mlflow.pyfunc.
load_model`` on it imports and runs the code file stored with that version. Anyone who can write to
the registry could therefore run code on every scoring worker. So the scorer (``kpiguard score``, the
daily DAG) and the champion gate never call it. Instead they:

1. read the version's ``MLmodel`` (YAML, parsed with ``yaml.safe_load``) and check that it is a
   kpiguard pyfunc: loader ``mlflow.pyfunc.loaders.code_model``, no extra ``code`` paths, a
   ``bundle`` artifact at a relative path inside the model;
2. download the stored code file and compare its sha256 with the installed
   ``pipeline/serving/pyfunc_model.py``: a version logged from any other code is refused (rule
   ``model_code_digest``), even though it would not be run, because it is not a kpiguard model;
3. download only the ``bundle`` artifact and load it with kpiguard's installed
   :meth:`pipeline.serving.bundle.Bundle.load`: config JSON, ``torch.load(weights_only=True)`` state_dict,
   JSON normalisation statistics and threshold, each checked before it serves (finite numbers, positive
   scales, shapes, acyclic trees); a bundle that fails is refused with rule ``model_loadable``, naming the
   file and the field.

The result has the pyfunc's ``predict(model_input)``, so :func:`pipeline.serving.bundle.predict_with`
returns the same columns either way.
"""
from __future__ import annotations

import hashlib
import posixpath
import tempfile
from pathlib import Path

import yaml

from pipeline.serving import tracking
from pipeline.serving.bundle import Bundle, BundleError, BundleModel

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
BUNDLE_ARTIFACT = "bundle"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _refuse(name: str, version: str, rule: str, detail: str) -> tracking.TrackingError:
    return tracking.TrackingError(tracking.tracking_uri(), f"registered model '{name}' version {version}: {detail}",
                                  rule=rule)


def _download(uri: str, rel: str, dst: Path, name: str, version: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/{rel}", dst_path=str(dst)))
    except (MlflowException, OSError) as exc:
        raise _refuse(name, version, "model_loadable", f"cannot download {rel!r}: {exc}") from None


def _relative_inside(path: str) -> bool:
    norm = posixpath.normpath(str(path))
    return bool(path) and not posixpath.isabs(norm) and norm != ".." and not norm.startswith("../")


def load_version(client, name: str, version: str) -> BundleModel:
    """The bundle of ``name``/``version``, checked and loaded by kpiguard's own code (see module doc)."""
    version = str(version)
    uri = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="kpiguard-model-") as tmp:
        tmp = Path(tmp)
        try:
            mlmodel = yaml.safe_load(_download(uri, "MLmodel", tmp / "meta", name, version).read_text()) or {}
        except yaml.YAMLError as exc:
            raise _refuse(name, version, "model_flavor", f"MLmodel is not valid YAML: {exc}") from None
        flavor = (mlmodel.get("flavors") or {}).get("python_function") or {}
        if flavor.get("loader_module") != CODE_LOADER or flavor.get("code"):
            raise _refuse(name, version, "model_flavor",
                          f"not a kpiguard pyfunc (loader {flavor.get('loader_module')!r}, code paths "
                          f"{flavor.get('code')!r}; expected {CODE_LOADER!r} and none)")
        code_name = posixpath.basename(str(flavor.get("model_code_path") or ""))
        if not code_name or not _relative_inside(code_name):
            raise _refuse(name, version, "model_flavor", "MLmodel names no model code file")
        stored = _download(uri, code_name, tmp / "code", name, version)
        if _sha256(stored) != _sha256(CODE_FILE):
            raise _refuse(name, version, "model_code_digest",
                          f"its code file {code_name!r} (sha256 {_sha256(stored)[:16]}...) is not the installed "
                          f"{CODE_FILE.name} (sha256 {_sha256(CODE_FILE)[:16]}...); refusing to use it. Register "
                          "models only with `kpiguard register`, and check who can write to the registry")
        rel = ((flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}).get("path")
        if not rel or not _relative_inside(rel):
            raise _refuse(name, version, "model_flavor", f"no '{BUNDLE_ARTIFACT}' artifact inside the model")
        bundle_dir = _download(uri, rel, tmp / "bundle", name, version)
        try:
            # Reads and checks everything into memory: the temp dir can go. Named by its version, not
            # the temp dir, also in errors raised later while it scores.
            bundle = Bundle.load(bundle_dir, label=f"of registered model '{name}' version {version}")
        except BundleError as exc:
            raise _refuse(name, version, "model_loadable",
                          f"the bundle does not load: file {exc.file}: {exc.detail}") from None
    return BundleModel(bundle)
