"""Bundles are checked before they serve (#25.2, #25.3, #25.5): one named refusal, never wrong alarms,
a hang or a traceback.

Each case damages one field of a real bundle (a dense autoencoder with an ECDF calibration, or a stacked
GBDT whose members are four rules) the way the adversarial run did, and expects
:class:`pipeline.serving.bundle.BundleError` (rule ``model_loadable``, exit 2 from the CLI) naming the
file and the field. Before the checks these bundles loaded and served: NaN weights scored 0 everywhere
(no alarm), ``clip_sigma: -1`` flagged every point, a cyclic tree hung the scorer, and malformed files
raised ``UnpicklingError``, ``TypeError``, ``AttributeError`` or ``IndexError``.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.frame import TIMESTAMP, VALUE
from models.windowing import spread_to_points
from pipeline.errors import KpiguardError
from pipeline.serving.bundle import Bundle, BundleError, BundleModel
from tests.bundles import make_bundle

SECONDS = 30  # a check that takes longer hangs (a cyclic tree used to loop forever)


@contextlib.contextmanager
def bounded(seconds: int = SECONDS):
    """Fail, instead of hanging, when the body runs past ``seconds`` (SIGALRM: the main thread, Unix)."""
    def hang(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    dae, rows = make_bundle(root, "dense_autoencoder")
    gbdt, _ = make_bundle(root, "stacked_gbdt", {"max_iter": 10}, calibration="none")
    return {"dense_autoencoder": dae, "stacked_gbdt": gbdt}, rows


def copy_of(bundles, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(bundles[0][name], target)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_weights(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def first_split(state) -> int:
    return int(torch.nonzero(state["is_leaf"][0] == 0)[1])  # a split node below the root of tree 0


def refused(directory: Path, rows: pd.DataFrame) -> BundleError:
    """The BundleError that loading (or else scoring with) ``directory`` raises."""
    with bounded(), pytest.raises(BundleError) as err:
        Bundle.load(directory).predict(rows)
    assert isinstance(err.value, KpiguardError) and err.value.rule == "model_loadable"  # -> exit 2
    return err.value


def test_the_intact_bundles_score(bundles):
    paths, rows = bundles
    for path in paths.values():
        out = Bundle.load(path).predict(rows)
        assert len(out) == len(rows) and np.isfinite(out["score"]).all()
        assert 0 < out["is_anomaly"].sum() < len(out)


# -- #25.2: non-finite or negative numbers -------------------------------------------------------
def _nan_weight(state):
    state["encoder.0.weight"][0, 0] = float("nan")


def _nan_level(cal):
    cal["per_kpi"]["kpi_0"]["levels"][3] = float("nan")


NUMBERS = [  # (detector, file, change, field named)
    ("dense_autoencoder", "detector/weights.pt", _nan_weight, "encoder.0.weight"),
    ("dense_autoencoder", "threshold.json", lambda t: t.update(global_value=float("nan")), "global_value"),
    ("dense_autoencoder", "threshold.json", lambda t: t.update(global_value=float("-inf")), "global_value"),
    ("dense_autoencoder", "threshold.json", lambda t: t["per_kpi"].update(kpi_1=float("nan")), "per_kpi.kpi_1"),
    ("dense_autoencoder", "bundle.json", lambda m: m.update(clip_sigma=-1), "clip_sigma"),
    ("dense_autoencoder", "bundle.json", lambda m: m.update(clip_sigma=0), "clip_sigma"),
    ("dense_autoencoder", "calibration.json", _nan_level, "per_kpi.kpi_0.levels[3]"),
    ("dense_autoencoder", "calibration.json", lambda c: c["pooled"].update(tail_scale=0.0), "pooled.tail_scale"),
    ("dense_autoencoder", "norm_stats.json", lambda n: n["kpi_0"].update(scale=0.0), "kpi_0.scale"),
    ("dense_autoencoder", "norm_stats.json", lambda n: n["kpi_0"].update(scale=-2.0), "kpi_0.scale"),
    ("dense_autoencoder", "norm_stats.json", lambda n: n["kpi_1"].update(center=float("nan")), "kpi_1.center"),
    ("dense_autoencoder", "norm_stats.json", lambda n: n["kpi_1"].update(interval_s=float("inf")), "kpi_1.interval_s"),
    ("stacked_gbdt", "detector/weights.pt", lambda s: s["value"].fill_(float("nan")), "value"),
    ("stacked_gbdt", "detector/weights.pt", lambda s: s["threshold"].fill_(float("nan")), "threshold"),
    ("stacked_gbdt", "detector/weights.pt", lambda s: s["left"][0].__setitem__(0, -3), "left[0, 0]"),
    ("stacked_gbdt", "detector/config.json",
     lambda c: c["fitted"]["members"]["diff_z"]["fitted"]["scales"].update(kpi_0=-1.0),
     "fitted.members.diff_z.fitted.scales.kpi_0"),
    ("stacked_gbdt", "detector/config.json",
     lambda c: c["fitted"]["calibrations"]["robust_zscore"]["pooled"]["values"].__setitem__(0, float("inf")),
     "fitted.calibrations.robust_zscore.pooled.values[0]"),
]


@pytest.mark.parametrize("name,file,change,field", NUMBERS,
                         ids=[f"{n}:{f}:{fld}" for n, f, _, fld in NUMBERS])
def test_non_finite_or_negative_numbers_are_refused_naming_file_and_field(bundles, tmp_path, name, file, change,
                                                                          field):
    bundle = copy_of(bundles, name, tmp_path)
    (edit_weights if file.endswith(".pt") else edit_json)(bundle / file, change)
    err = refused(bundle, bundles[1])
    assert err.file == file and err.field == field, str(err)
    assert f"file {file}" in str(err) and f"field '{field}'" in str(err)


def test_nan_on_covered_points_is_an_error_never_uncovered(bundles):
    """NaN weights that get past loading (set in memory) raise while scoring: before, every NaN was taken
    for a point no window covers and filled with 0, so a whole day scored "0 anomalies"."""
    paths, rows = bundles
    bundle = Bundle.load(paths["dense_autoencoder"])
    with torch.no_grad():
        next(bundle.detector.module.parameters()).fill_(float("nan"))
    with pytest.raises(BundleError, match=r"not finite.*full window covers") as err:
        BundleModel(bundle).predict(rows)
    assert err.value.file.startswith("detector/")
    # the window helpers themselves: a window's NaN score is not "no window covers this point"
    with pytest.raises(RuntimeError, match="not finite"):
        spread_to_points(np.array([[1.0, np.nan, 2.0]]), np.array([0]), 3, 3)


# -- #25.3: trees that are not trees --------------------------------------------------------------
def _cycle_to_root(state):
    state["left"][0, first_split(state)] = 0


def _self_loop(state):
    node = first_split(state)
    state["right"][0, node] = node


@pytest.mark.parametrize("change", [_cycle_to_root, _self_loop], ids=["child->root", "child->itself"])
def test_a_stacked_gbdt_tree_with_a_cycle_is_refused_not_hung(bundles, tmp_path, change):
    bundle = copy_of(bundles, "stacked_gbdt", tmp_path)
    edit_weights(bundle / "detector/weights.pt", change)
    err = refused(bundle, bundles[1])
    assert err.file == "detector/weights.pt" and "cycle" in str(err) and err.field.startswith(("left[0,", "right[0,"))


def test_an_isolation_forest_with_a_cycle_is_refused_not_hung(tmp_path):
    """The forest's level loop (``while len(frontier)``) never ended on a cycle either."""
    bundle, rows = make_bundle(tmp_path, "isolation_forest", {"n_estimators": 5})

    def cycle(state):
        left = state["children_left"][0]
        node = int(torch.nonzero(left[1:] >= 0)[0]) + 1  # a split node below the root
        left[node] = 0

    edit_weights(bundle / "detector/weights.pt", cycle)
    err = refused(bundle, rows)
    assert err.file == "detector/weights.pt" and err.field.startswith("children_left[0,") and "cycle" in str(err)


# -- #25.5: malformed bundles -----------------------------------------------------------------------
class Payload:
    """Unpickling this would create ``marker``; weights_only loading must refuse it unrun."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _pickle_payload(bundle: Path, marker: Path) -> None:
    torch.save({"encoder.0.weight": Payload(marker)}, bundle / "detector/weights.pt")


MALFORMED = [  # (detector, damage(bundle, marker), file named, what the message says)
    ("dense_autoencoder", _pickle_payload, "detector/weights.pt", "weights_only"),
    ("dense_autoencoder", lambda b, _: torch.save(torch.zeros(3), b / "detector/weights.pt"),
     "detector/weights.pt", "got Tensor"),
    ("dense_autoencoder", lambda b, _: torch.save({"encoder.0.weight": [1.0]}, b / "detector/weights.pt"),
     "detector/weights.pt", "must be a tensor"),
    ("dense_autoencoder", lambda b, _: edit_weights(b / "detector/weights.pt",
                                                    lambda s: s.update({"encoder.0.weight": torch.zeros(2, 2)})),
     "detector/weights.pt", "size mismatch for encoder.0.weight"),
    ("dense_autoencoder", lambda b, _: (b / "detector/weights.pt").write_bytes(
        (b / "detector/weights.pt").read_bytes()[:100]), "detector/weights.pt", "weights_only"),
    ("dense_autoencoder", lambda b, _: (b / "detector/config.json").write_text("[]"),
     "detector/config.json", "got list"),
    ("dense_autoencoder", lambda b, _: (b / "detector/config.json").write_text('{"detector": "dense_autoenc'),
     "detector/config.json", "not valid JSON"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "detector/config.json", lambda c: c.pop("train_config")),
     "detector/config.json", "train_config"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "detector/config.json", lambda c: c["config"].update(window="x")),
     "detector/config.json", "'window' must be int"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "detector/config.json", lambda c: c.update(detector="nope")),
     "detector/config.json", "names no known detector"),
    ("dense_autoencoder", lambda b, _: (b / "calibration.json").write_text('"ecdf"'), "calibration.json", "got str"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "calibration.json", lambda c: c.update(method="magic")),
     "calibration.json", "unknown calibration method"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "threshold.json", lambda t: t.pop("global_value")),
     "threshold.json", "never fitted"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "norm_stats.json", lambda n: n.update(kpi_0=[1, 2, 3])),
     "norm_stats.json", "must be an object"),
    ("dense_autoencoder", lambda b, _: (b / "bundle.json").unlink(), "bundle.json", "not found"),
    ("dense_autoencoder", lambda b, _: edit_json(b / "bundle.json", lambda m: m.update(detector="stacked_gbdt")),
     "bundle.json", "detector/ directory holds"),
    ("stacked_gbdt", lambda b, _: edit_weights(b / "detector/weights.pt", lambda s: s["left"][0].__setitem__(0, 10**9)),
     "detector/weights.pt", "outside the tree's nodes"),
    ("stacked_gbdt", lambda b, _: edit_weights(b / "detector/weights.pt", lambda s: s["feature"].fill_(99)),
     "detector/weights.pt", "feature columns"),
    ("stacked_gbdt", lambda b, _: edit_weights(b / "detector/weights.pt", lambda s: s.pop("is_leaf")),
     "detector/weights.pt", "weights lack ['is_leaf']"),
    ("stacked_gbdt", lambda b, _: edit_weights(b / "detector/weights.pt",
                                               lambda s: s.update(value=s["value"][:, :3])),
     "detector/weights.pt", "table of shape"),
]


@pytest.mark.parametrize("name,damage,file,needle", MALFORMED,
                         ids=[f"{n}:{f}:{needle}" for n, _, f, needle in MALFORMED])
def test_malformed_bundles_are_one_named_refusal_not_a_traceback(bundles, tmp_path, name, damage, file, needle):
    bundle, marker = copy_of(bundles, name, tmp_path), tmp_path / "payload-ran"
    damage(bundle, marker)
    err = refused(bundle, bundles[1])
    assert err.file == file and needle in str(err), str(err)
    assert not marker.exists()  # the pickle payload was refused, never run


def test_an_error_while_predicting_names_the_part(bundles):
    """Whatever still fails while scoring (here a calibration state broken in memory, after its checks)
    is a BundleError naming the file, not the traceback it used to be."""
    paths, rows = bundles
    bundle = Bundle.load(paths["dense_autoencoder"])
    bundle.calibration.per_kpi["kpi_0"]["values"] = "broken"
    with pytest.raises(BundleError, match="fails while scoring") as err:
        bundle.predict(rows)
    assert err.value.file == "calibration.json"


def test_rows_the_model_cannot_read_stay_a_data_error(bundles):
    """The guard around scoring is about the bundle: bad input rows keep their own error and rule."""
    paths, rows = bundles
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="required_columns"):
        Bundle.load(paths["dense_autoencoder"]).predict(rows.drop(columns=[VALUE]))


# -- through the CLI: exit 2, one paragraph -------------------------------------------------------
def test_kpiguard_score_refuses_a_damaged_registered_bundle_with_exit_2(bundles, tmp_path, monkeypatch, capsys):
    """A registered version whose bundle has NaN weights, and one whose tree has a cycle: ``kpiguard score``
    exits 2 with one line naming the version, the file, the field and ``model_loadable``, and writes nothing."""
    import mlflow
    import yaml

    from pipeline import cli
    from pipeline.serving.bundle import log_bundle
    from tests.conftest import small_params_dict

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    damaged = {"nan-weights": ("dense_autoencoder", _nan_weight, "field 'encoder.0.weight'"),
               "cyclic-tree": ("stacked_gbdt", _cycle_to_root, "cycle")}
    # No mlflow.set_experiment / set_tracking_uri: process-wide state that would outlive this test.
    experiment = mlflow.MlflowClient().create_experiment("bundle-checks")
    for model, (name, change, _) in damaged.items():
        bundle = copy_of(bundles, name, tmp_path / model)
        edit_weights(bundle / "detector/weights.pt", change)
        with mlflow.start_run(experiment_id=experiment):
            info = log_bundle(bundle)
        mlflow.register_model(info.model_uri, model)
    rows = bundles[1]
    rows.to_csv(tmp_path / "in.csv", index=False)
    raw = small_params_dict()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    day = str(pd.Timestamp(rows[TIMESTAMP].iloc[-1]).date())
    for model, (_, _, needle) in damaged.items():
        capsys.readouterr()
        with bounded(120):
            code = cli.main(["score", "--date", day, "--input", f"csv:{tmp_path / 'in.csv'}",
                             "--model-uri", f"models:/{model}/1", "--output", str(tmp_path / "scores"),
                             "--params", str(tmp_path / "params.yaml")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        (line,) = [l for l in err.splitlines() if l.startswith("kpiguard score: error:")]
        assert "model_loadable" in line and f"'{model}' version 1" in line and "file detector/weights.pt" in line
        assert needle in line
    assert not (tmp_path / "scores").exists()

