"""A property-based fuzz of served bundles (#25): any damage to any file is a refusal or a sound score.

Two real bundles are built once (a dense autoencoder with an ECDF calibration; a stacked GBDT whose
members are four rules, with a likelihood calibration). Each example damages one file of one of them:
its bytes (truncated, flipped, emptied, deleted), its JSON (a number made NaN, infinite, negative, huge
or zero, a value of another type, a key dropped, the whole document replaced), or its tensors (a value
made NaN, infinite, huge or negative, a tree's child pointed at another node, a shape or dtype changed, a
tensor dropped or added, the state replaced by a tensor, a list or a pickle payload). The invariant:

- either loading or scoring raises :class:`pipeline.serving.bundle.BundleError`, rule ``model_loadable``,
  naming the file (``kpiguard score`` prints it as one paragraph and exits 2);
- or the bundle scores every input row with finite scores and thresholds, and when the damage left its
  digest unchanged (a field that decides nothing, such as the training history) exactly as before;
- never another exception, and never a hang: each example runs under a hard time bound.

Bounded (``max_examples``) and derandomised under ``CI=true`` by the profile in tests/conftest.py.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from models.frame import KPI_ID, TIMESTAMP, VALUE
from pipeline.serving.bundle import IS_ANOMALY, OUTPUT_COLUMNS, SCORE, THRESHOLD, Bundle, BundleError, bundle_digest
from tests.bundles import make_bundle
from tests.test_bundle_checks import Payload, bounded

FILES = ("bundle.json", "norm_stats.json", "calibration.json", "threshold.json", "detector/config.json",
         "detector/weights.pt")
NUMBERS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, -1e-300, 1e-300, 1e308, -1e308, 10**30, -7, 3,
           2**63, 0.5]
OTHERS = ["x", "", None, True, False, [], {}, [1, 2], {"a": 1}]
TENSOR_VALUES = [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, -1.0, 0.0, 10**9, -(10**9), -1]


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-bundles")
    out = {}
    dae, rows = make_bundle(root, "dense_autoencoder")
    gbdt, _ = make_bundle(root, "stacked_gbdt", {"max_iter": 8, "max_depth": 4}, calibration="likelihood")
    for name, path in (("dense_autoencoder", dae), ("stacked_gbdt", gbdt)):
        bundle = Bundle.load(path)
        out[name] = (path, bundle.predict(rows), bundle.meta["digest"])
    return out, rows


# -- the damage ------------------------------------------------------------------------------------
def descend(doc, choices: list[int]):
    """(parent, key) of the node reached by following ``choices`` down ``doc`` (parent None: the root)."""
    parent, key, node = None, None, doc
    for c in choices:
        if isinstance(node, dict) and node:
            parent, key = node, sorted(node)[c % len(node)]
        elif isinstance(node, list) and node:
            parent, key = node, c % len(node)
        else:
            break
        node = parent[key]
    return parent, key


def damage_json(text: str, draw) -> str:
    doc = json.loads(text)
    parent, key = descend(doc, draw(st.lists(st.integers(0, 10**6), max_size=8)))
    # A KPI's sampling interval changed to another valid one is not a damaged bundle but a KPI arriving
    # off its trained grid: what the scorer does with those rows is tests of the grid's own (#25.1, #25.4).
    grid = key == "interval_s"
    node = doc if parent is None else parent[key]
    op = draw(st.sampled_from(["number", "other", "scale", "drop", "type"]))
    if op == "number":
        new = draw(st.sampled_from(NUMBERS))
    elif op == "other":
        new = draw(st.sampled_from(OTHERS))
    elif op == "scale" and isinstance(node, (int, float)) and not isinstance(node, bool):
        new = node * draw(st.sampled_from([-1, 1e6, 1e-6, 0, 2])) + draw(st.sampled_from([0, 1]))
    elif op == "drop" and parent is not None:
        del parent[key]
        return json.dumps(doc)
    elif isinstance(node, dict):
        new = list(node.values())
    elif isinstance(node, list):
        new = {str(i): v for i, v in enumerate(node)}
    else:
        new = str(node)
    if parent is None:
        return json.dumps(new)
    assume(not (grid and isinstance(new, (int, float)) and not isinstance(new, bool) and 1e-9 <= new <= 1e9))
    parent[key] = new
    return json.dumps(doc)


def damage_bytes(data: bytes, draw) -> bytes | None:
    op = draw(st.sampled_from(["truncate", "flip", "empty", "delete", "append"]))
    if op == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if op == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if op == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return b"" if op == "empty" else None


def damage_tensors(path: Path, draw, marker: Path) -> None:
    state = torch.load(path, weights_only=True)
    op = draw(st.sampled_from(["value", "link", "shape", "dtype", "drop", "extra", "whole"]))
    if op == "whole":
        replacement = draw(st.sampled_from(["tensor", "list", "nested", "pickle"]))
        torch.save({"tensor": torch.zeros(3), "list": [1.0, 2.0], "nested": {"a": {"b": torch.ones(1)}},
                    "pickle": {"x": Payload(marker)}}[replacement], path)
        return
    if op == "extra" or not state:
        state["bogus.weight"] = torch.zeros(2)
        torch.save(state, path)
        return
    name = sorted(state)[draw(st.integers(0, len(state) - 1))]
    tensor = state[name]
    if op == "drop":
        del state[name]
    elif op in ("value", "link") and tensor.numel():
        flat = tensor.reshape(-1).clone()
        i = draw(st.integers(0, flat.numel() - 1))
        if op == "link":  # an in-range index: a child pointing up or across the tree, a wrong feature
            value = draw(st.integers(0, max(tensor.shape[-1] - 1, 0))) if tensor.ndim else 0
        else:
            value = draw(st.sampled_from(TENSOR_VALUES))
        if tensor.dtype == torch.bool:
            flat[i] = bool(value == value and value)
        elif not tensor.is_floating_point():
            flat[i] = int(max(min(value, 2**62), -2**62)) if np.isfinite(value) else -1
        else:
            flat[i] = value
        state[name] = flat.reshape(tensor.shape)
    elif op == "shape":
        kind = draw(st.sampled_from(["flat", "cut", "add_axis"]))
        state[name] = {"flat": tensor.reshape(-1), "cut": tensor.reshape(-1)[:max(tensor.numel() - 1, 0)],
                       "add_axis": tensor.unsqueeze(0)}[kind]
    else:
        state[name] = tensor.to(draw(st.sampled_from([torch.float64, torch.float16, torch.int64, torch.bool])))
    torch.save(state, path)


def damage(directory: Path, file: str, level: str, draw, marker: Path) -> None:
    """Damage ``file`` of a bundle directory: its bytes, or (``structure``) its JSON or tensors."""
    path = directory / file
    if level == "bytes":
        data = damage_bytes(path.read_bytes(), draw)
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
    elif file.endswith(".pt"):
        damage_tensors(path, draw, marker)
    else:
        path.write_text(damage_json(path.read_text(), draw))


@settings(max_examples=200, deadline=timedelta(seconds=10))
@given(name=st.sampled_from(["dense_autoencoder", "stacked_gbdt"]), file=st.sampled_from(FILES),
       level=st.sampled_from(["bytes", "structure", "structure"]), data=st.data())  # mostly parseable damage
def test_fuzz_damaged_bundles_are_refused_by_name_or_score_soundly(originals, name, file, level, data):
    bundles, rows = originals
    source, reference, digest = bundles[name]
    with tempfile.TemporaryDirectory(prefix="kpiguard-fuzz-") as tmp:
        directory, marker = Path(tmp) / "bundle", Path(tmp) / "payload-ran"
        shutil.copytree(source, directory)
        damage(directory, file, level, data.draw, marker)
        with bounded(30):
            try:
                bundle = Bundle.load(directory)
                out = bundle.predict(rows)
            except BundleError as err:
                assert err.rule == "model_loadable" and err.file, str(err)
                assert f"file {err.file}" in str(err)
                assert not marker.exists()  # a pickle payload is refused, never run
                event(f"refused: {err.file}")  # --hypothesis-show-statistics tells refusals from scores
                return
            same = bundle_digest(directory, bundle.clip_sigma) == digest
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    pd.testing.assert_frame_equal(out[[KPI_ID, TIMESTAMP, VALUE]], reference[[KPI_ID, TIMESTAMP, VALUE]])
    assert np.isfinite(out[SCORE]).all() and np.isfinite(out[THRESHOLD]).all()
    assert out[IS_ANOMALY].dtype == bool
    event("scored identically (same digest)" if same else "scored differently")
    if same:  # equal digests score identically: the damage hit nothing that decides the output
        pd.testing.assert_frame_equal(out, reference)
