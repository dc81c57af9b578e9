"""params.yaml is validated on load: unknown keys and bad types are clear errors."""
from __future__ import annotations

import pytest
import yaml

from pipeline.params import ParamsError, load_params, parse_params
from tests.conftest import REPO, small_params_dict


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.data.train == "synthetic:"
    assert params.validation.max_gap_ratio == pytest.approx(0.2)
    assert params.train.detectors, "the default config enables detectors"
    assert len(params.digest()) == 16


@pytest.mark.parametrize("section,value,needle", [
    ({"windows": {"lenght": 48}}, None, "windows.lenght"),
    ({"windows": {"length": "forty"}}, None, "windows.length"),
    ({"windows": {"train_fraction": 0.9, "val_fraction": 0.2}}, None, "at most 1"),
    ({"data": {"train": "nowhere.csv"}}, None, "needs a scheme"),
    ({"train": {"device": "tpu"}}, None, "train.device"),
    ({"bogus": {}}, None, "bogus"),
    ({"train": {"detectors": ["nope"]}}, None, "unknown detector 'nope'"),
    ({"score": {"incident_gap": "-5min"}}, None, "score.incident_gap"),
    ({"score": {"incident_gap": "soon"}}, None, "score.incident_gap"),
])
def test_bad_params_are_named(section, value, needle):
    raw = small_params_dict()
    for key, sub in section.items():
        if key in raw and isinstance(sub, dict):
            raw[key] = {**raw[key], **sub}
        else:
            raw[key] = sub
    with pytest.raises(ParamsError) as err:
        parse_params(raw, source="params.yaml")
    assert needle in str(err.value)
    assert "params.yaml" in str(err.value)


def test_unknown_detector_hyperparameter_is_named():
    raw = small_params_dict()
    raw["detectors"] = {**raw["detectors"], "robust_zscore": {"not_a_knob": 1}}
    with pytest.raises(ParamsError, match=r"detectors\.robust_zscore.*not_a_knob"):
        parse_params(raw)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params_dict()))
    params = load_params(path, ["windows.length=96", "data.test=csv:/tmp/x.csv", "train.detectors=[robust_zscore]"])
    assert params.windows.length == 96 and params.data.test == "csv:/tmp/x.csv"
    assert params.train.detectors == ["robust_zscore"]
    with pytest.raises(ParamsError, match="section.key=value"):
        load_params(path, ["windows.length"])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("windows: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def _schema_keys(model, prefix: str = ""):
    """Dotted keys of every field of a params section, recursively (sections by their YAML name)."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _schema_keys(field.annotation, key + ".")
        else:
            yield key


def test_params_yaml_lists_every_key_a_user_may_set():
    """`dvc exp run -S key=value` only overrides keys params.yaml has (else it asks for `+key`): every field
    of the schema, and every key of the threshold and calibration methods, the inactive ones included.
    (Each detector's hyperparameters: tests/models/test_registry.py.)"""
    from models import calibration
    from pipeline.eval import thresholds
    from pipeline.params import Params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def has(dotted: str) -> bool:
        node = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    keys = set(_schema_keys(Params))
    keys |= {f"evaluate.threshold.{k}" for k in thresholds._CFG_KEYS}  # what make_threshold accepts
    keys.discard("evaluate.threshold.budget")  # set as evaluate.alarm_budget (EvaluateParams.threshold_rule)
    keys |= {f"evaluate.calibration.{k}" for k in ("method", "min_points", *(
        p for method in calibration.METHODS.values() for p in method.params))}  # what make_calibration accepts
    assert {"evaluate.threshold.quantile", "evaluate.threshold.pot_q", "paths.metrics"} <= keys
    assert sorted(k for k in keys if not has(k)) == []
    load_params(REPO / "params.yaml")  # and the file, with them all, still validates
