"""The shape of pipeline/: layers that only point one way, no import cycle, params without side effects.

The import graph is read from the source (every ``import`` and ``from ... import``, module level and
inside functions), so a lazy import cannot hide an edge. docs/pipeline.md draws the same layers.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PIPELINE = REPO / "pipeline"
# The packages that know nothing of how they are used: they never import the ones that use them.
FOUNDATION = ("data", "io", "eval")
USERS = ("stages", "serving", "batch", "review", "tools", "orchestration", "cli", "runtime", "summary")
# What may use what (beyond the foundation, params, errors, threads and models, which everyone may use).
MAY_IMPORT = {
    "serving": set(),
    "stages": {"serving"},
    "batch": {"serving"},
    "review": {"batch", "serving"},  # verdicts are given on the incidents of scored days
    "orchestration": {"runtime"},
    "tools": {"stages", "serving", "runtime", "batch", "review"},  # the simulated review plays the reviewer
    "runtime": {"io"},
    "cli": set(USERS) | {"stages"},
}
HEAVY = ("torch", "pandas", "numpy", "great_expectations", "mlflow", "sklearn", "airflow", "dvc", "matplotlib",
         "pyarrow", "boto3")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PIPELINE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The pipeline module an import names (``pipeline.eval.metrics``; a name inside a module: that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pipeline.eval import metrics`` imports the module pipeline.eval.metrics
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {m for n in names if n.startswith("pipeline") and (m := resolve(n)) and m != module_name(path)}
    return out


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


def test_the_graph_is_read():
    assert "pipeline.eval.metrics" in GRAPH["pipeline.eval.thresholds"]
    assert "pipeline.eval.selection" in GRAPH["pipeline.serving.gate"]  # the gate's champion rule is evaluate's
    assert "pipeline.data.prep" in GRAPH["pipeline.serving.bundle"]


def test_foundation_never_imports_what_uses_it():
    bad = [(a, b) for a, deps in GRAPH.items() for b in deps
           if layer(a) in FOUNDATION and layer(b) in USERS]
    assert not bad, f"data/, io/ and eval/ must not import stages, serving, batch, tools or the CLI: {bad}"


def test_each_layer_imports_only_what_it_may():
    lower = {*FOUNDATION, "params", "errors", "threads", "pipeline"}
    bad = [(a, b) for a, deps in GRAPH.items() for b in deps
           if layer(a) in MAY_IMPORT and layer(b) != layer(a) and layer(b) not in lower | MAY_IMPORT[layer(a)]]
    assert not bad, bad


def test_no_stage_imports_another_stage():
    bad = [(a, b) for a, deps in GRAPH.items() for b in deps if layer(a) == layer(b) == "stages"]
    assert not bad, f"stages compose data/, eval/ and serving/, never another stage: {bad}"


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_errors_and_params_sit_at_the_bottom():
    assert GRAPH["pipeline.errors"] == set()
    assert {layer(m) for m in GRAPH["pipeline.params"]} <= {"errors", "eval"}  # validators check metric names


def test_importing_params_loads_no_stage_and_no_heavy_library():
    code = ("import json, sys\nimport pipeline.params\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    ours = [m for m in loaded if m.startswith(("pipeline.", "models"))]
    assert ours == ["pipeline.errors", "pipeline.params"], ours
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def test_parsing_params_changes_no_process_state(small_params):
    """Storage bounds and thread pools are applied by pipeline.runtime, not by loading params."""
    code = ("import json, os\nfrom pipeline.params import load_params\nfrom pipeline.io import storage\n"
            "before = storage.settings(), dict(os.environ)\n"
            "load_params('params.yaml', ['storage.max_attempts=7', 'train.threads=1', 'mlflow.connect_retries=9'])\n"
            "print(json.dumps([storage.settings() == before[0], dict(os.environ) == before[1]]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert json.loads(out) == [True, True]


def test_runtime_applies_storage_threads_and_the_mlflow_environment():
    code = ("import json, os\nfrom pipeline import runtime\nfrom pipeline.params import load_params\n"
            "from pipeline.io import storage\n"
            "p = load_params('params.yaml', ['storage.max_attempts=7', 'score.threads=1', 'mlflow.connect_retries=9'])\n"
            "plan = runtime.apply(p, 'score')\n"
            "import torch\n"
            "print(json.dumps([storage.settings().max_attempts, plan.threads, torch.get_num_threads(),\n"
            "                  os.environ['OMP_NUM_THREADS'], os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES']]))\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("OMP_NUM_THREADS", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert json.loads(out) == [7, 1, 1, "1", "9"]


def test_the_logged_model_entry_file_is_unchanged():
    """Registered versions keep loading: the safe loader compares this file's bytes with the stored copy,
    so it must stay byte-identical to what every earlier version was logged with."""
    import hashlib

    from pipeline.serving import store

    assert store.CODE_FILE == PIPELINE / "serving" / "pyfunc_model.py"
    assert hashlib.sha256(store.CODE_FILE.read_bytes()).hexdigest() == (
        "f6ca02902e8b5f1883b82e4e0d4928116c774ecb623965fb3a2bfcbf584bc3a0")


def test_every_code_dependency_in_dvc_yaml_exists():
    """A module that moves must move in dvc.yaml too, or its stage would never rerun when it changes."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    code = {name: [d for d in stage.get("deps", []) if isinstance(d, str) and not d.startswith("${")
                   and "${" not in d] for name, stage in stages.items()}
    missing = {name: [d for d in deps if not (REPO / d).exists()] for name, deps in code.items()}
    assert not any(missing.values()), missing
    for name in ("ingest", "validate", "windows", "train", "evaluate", "register"):
        assert f"pipeline/stages/{name}.py" in code[name], name
