"""models.registry.DETECTORS is the one table of detectors: the files, the classes, params.yaml and
dvc.yaml must agree with it, and this module fails when they do not."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from models import registry
from models.registry import DetectorSpec, UnknownDetector
from tests.conftest import REPO

NAMES = registry.names()
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def test_every_registered_name_has_its_module_and_its_config_module_and_nothing_else_does():
    for name in NAMES:
        assert (REPO / "models" / f"{name}.py").is_file(), name
        assert (REPO / "models" / "configs" / f"{name}.py").is_file(), name
    configs = {p.stem for p in (REPO / "models" / "configs").glob("*.py")} - {"__init__", "shared"}
    assert configs == set(NAMES)  # a config without a registry entry is a detector half added


@pytest.mark.parametrize("name", NAMES)
def test_the_detector_class_and_its_config_class_agree_with_the_spec(name):
    spec = registry.DETECTORS[name]
    cls, config = registry.get(name), registry.config_class(name)
    assert (cls.__module__, cls.__name__) == (f"models.{name}", spec.detector)
    assert (config.__module__, config.__name__) == (f"models.configs.{name}", spec.config)
    assert cls.name == name and cls.config_class is config
    assert cls.supervised is spec.supervised is registry.is_supervised(name)
    assert (name in registry.supervised_names()) is spec.supervised


def test_params_yaml_has_one_section_per_detector_with_exactly_its_config_fields():
    sections = PARAMS["detectors"]
    assert set(sections) == set(NAMES)
    for name, section in sections.items():
        fields = [f.name for f in dataclasses.fields(registry.config_class(name))]
        assert sorted(section or {}) == sorted(fields), name


def test_params_yaml_names_only_registered_detectors():
    assert set(PARAMS["train"]["detectors"]) <= set(NAMES)
    assert set(PARAMS["evaluate"]["calibration_by_detector"]) <= set(NAMES)


def test_dvc_train_stage_depends_on_the_detector_module_and_its_own_config():
    train = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    assert train["matrix"] == {"detector": "${train.detectors}"}
    assert {"models/${item.detector}.py", "models/configs/${item.detector}.py", "models/configs/shared.py"} \
        <= set(train["deps"])
    assert "models/configs.py" not in train["deps"]  # one detector's config edit retrains that detector only


@pytest.mark.parametrize("spec, match", [
    (DetectorSpec("DiffZ", "DiffZConfig", supervised=True), "diff_z: supervised is False, the registry says True"),
    (DetectorSpec("DiffZ", "DetectorConfig", supervised=False),
     r"diff_z: config_class is DiffZConfig, the registry says DetectorConfig \(models.configs.diff_z\)"),
    (DetectorSpec("DiffZee", "DiffZConfig", supervised=False),
     "registry entry 'diff_z' names DiffZee, which models.diff_z does not define"),
    (DetectorSpec("DiffZ", "DiffZeeConfig", supervised=False),
     "registry entry 'diff_z' names DiffZeeConfig, which models.configs.diff_z does not define"),
])
def test_get_refuses_a_spec_that_disagrees_with_the_class(spec, match, monkeypatch):
    monkeypatch.setitem(registry.DETECTORS, "diff_z", spec)
    with pytest.raises(RuntimeError, match=match):
        registry.get("diff_z")


def test_get_refuses_a_class_whose_name_is_not_its_entry(monkeypatch):
    cls = registry.get("diff_z")
    monkeypatch.setattr(cls, "name", "diff_y")
    with pytest.raises(RuntimeError, match="registry entry 'diff_z' points to DiffZ, whose name is 'diff_y'"):
        registry.get("diff_z")


def test_unknown_names_are_refused_with_the_known_ones():
    for lookup in (registry.get, registry.config_class, registry.is_supervised, registry.create):
        with pytest.raises(UnknownDetector, match="unknown detector 'nope'; known detectors: windowed_gaussian, diff_z"):
            lookup("nope")


def test_members_are_validated_against_the_registry(monkeypatch):
    from models.configs.ensemble import EnsembleConfig

    EnsembleConfig.from_dict({"members": ["diff_z"]})
    monkeypatch.setitem(registry.DETECTORS, "diff_z", DetectorSpec("DiffZ", "DiffZConfig", supervised=True))
    with pytest.raises(ValueError, match="'diff_z', which is supervised"):
        EnsembleConfig.from_dict({"members": ["diff_z"]})
    # a new table, not delitem: restoring a deleted key would move it to the end of the registry's order
    monkeypatch.setattr(registry, "DETECTORS", {n: s for n, s in registry.DETECTORS.items() if n != "diff_z"})
    with pytest.raises(ValueError, match="'diff_z'; choose among windowed_gaussian, robust_zscore"):
        EnsembleConfig.from_dict({"members": ["diff_z"]})


def test_configs_import_without_torch_and_one_at_a_time():
    """params validation reads every config: it must not pay for torch (nor for the other configs)."""
    code = ("import json, sys\n"
            "import models.configs\n"
            "bare = sorted(m for m in sys.modules if m.startswith('models.configs.'))\n"
            "import models.configs.diff_z\n"
            "one = sorted(m for m in sys.modules if m.startswith('models.configs.'))\n"
            "from models import registry\n"
            "for n in registry.names(): registry.config_class(n).from_dict({})\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'scipy'})\n"
            "print(json.dumps([bare, one, heavy]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[], ["models.configs.diff_z"], []]
