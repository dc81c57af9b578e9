"""Load-time checks of a saved detector: what its files must satisfy before it may score anything.

A detector is saved as ``config.json`` + ``weights.pt`` (:mod:`models.base`), and a served bundle carries
one. Files that were truncated, edited or written by something else must fail *here*, naming the file and
the field, rather than later: with a traceback half-way through scoring, a hang (a tree whose child points
back to its root), or by quietly serving nonsense (NaN weights score NaN, which used to be filled as
"not covered", so nothing ever alarmed; a negative scale flips every score). What is checked:

- ``config.json`` is a JSON object with the keys ``save`` writes; ``weights.pt`` is a flat mapping of
  names to dense tensors, read with ``torch.load(weights_only=True)`` (nothing is unpickled: a pickle
  payload is refused, never run);
- every number of the fitted scalars and every floating-point tensor is finite;
- each detector's own invariants, raised from its ``_load_fitted_scalars`` / ``_load_state_dict``
  through the helpers below: scales > 0, tree child indices in range and forming trees (no cycle, no
  shared node) no deeper than the config allows, feature indices in range, finite split thresholds;
- shapes: ``nn.Module.load_state_dict`` (strict) for the networks, one common shape for tree tables.

These checks prove a detector *can* score; they cannot tell whether it scores *well*.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

INT64 = 2 ** 63


class StateError(ValueError):
    """A saved detector's file cannot be used: ``file`` (``config.json``, ``weights.pt``), ``field`` (a
    dotted path in the JSON, or a tensor name) and ``problem``."""

    def __init__(self, field: str | None, problem: str, file: str | None = None):
        self.field, self.problem, self.file = field, problem, file
        where = " ".join(p for p in (file, f"field '{field}'" if field else None) if p)
        super().__init__(f"{where}: {problem}" if where else problem)

    def within(self, prefix: str | None = None, file: str | None = None) -> "StateError":
        """The same error seen from an enclosing field (``prefix``) or file."""
        field = ".".join(p for p in (prefix, self.field) if p) or None
        return StateError(field, self.problem, self.file or file)


@contextlib.contextmanager
def blame(field: str | None = None, file: str | None = None) -> Iterator[None]:
    """Errors raised while reading ``field`` of ``file`` become a :class:`StateError` naming them.

    The errors caught are those a malformed value makes Python, numpy and torch raise (a string where a
    number belongs, a missing key, a tensor of the wrong shape); anything else is a bug and propagates.
    """
    try:
        yield
    except StateError as exc:
        raise exc.within(field, file) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise StateError(field, f"{type(exc).__name__}: {text}", file) from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; :class:`StateError` (naming the file) otherwise."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise StateError(None, "not found", path.name) from None
    except OSError as exc:
        raise StateError(None, f"cannot be read: {exc}", path.name) from None
    except UnicodeDecodeError as exc:
        raise StateError(None, f"is not UTF-8 text: {exc}", path.name) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(None, f"is not valid JSON: {exc}", path.name) from None
    except RecursionError:
        raise StateError(None, "is nested too deeply to be a kpiguard file", path.name) from None
    if not isinstance(value, dict):
        raise StateError(None, f"must hold a JSON object, got {type(value).__name__}", path.name)
    return value


def read_state_dict(path: Path, map_location: str = "cpu") -> dict:
    """``weights.pt`` as a flat ``{name: dense tensor}`` mapping, every floating tensor finite.

    Read with ``torch.load(weights_only=True)``: torch's restricted unpickler builds tensors and plain
    containers only, and refuses any other object (a pickle payload raises, it never runs).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise StateError(None, "not found", path.name)
    try:
        state = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - any failure of the parser of these bytes means "not a state_dict"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StateError(None, f"is not a tensor state_dict torch can read with weights_only=True "
                               f"({type(exc).__name__}: {detail[:300]})", path.name) from None
    if not isinstance(state, dict):
        raise StateError(None, f"must hold a mapping of names to tensors (a state_dict), got "
                               f"{type(state).__name__}", path.name)
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise StateError(repr(name), "tensor names must be strings", path.name)
        if not isinstance(tensor, torch.Tensor):
            raise StateError(name, f"must be a tensor, got {type(tensor).__name__}", path.name)
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_complex():
            raise StateError(name, f"must be a dense real tensor, got layout {tensor.layout}, dtype {tensor.dtype}",
                             path.name)
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise StateError(name, f"{bad} of {tensor.numel()} value(s) are not finite (NaN or ±inf)", path.name)
    return state


def check_finite(value: Any, field: str | None = None) -> None:
    """Every number in a JSON value (nested dicts and lists) is finite and fits in 64 bits."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StateError(field, f"must be finite, got {value!r}")
    elif isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise StateError(field, f"is out of the 64-bit range ({value})")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_finite(item, f"{field}[{i}]" if field else f"[{i}]")
    else:
        raise StateError(field, f"is not a JSON value ({type(value).__name__})")


def number(value: Any, field: str, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (never a bool), ``> 0`` with ``positive``, ``>= minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise StateError(field, f"must be a number, got {type(value).__name__} ({value!r})")
    out = float(value)
    if not math.isfinite(out):
        raise StateError(field, f"must be finite, got {out!r}")
    if positive and not out > 0:
        raise StateError(field, f"must be > 0, got {out!r}")
    if minimum is not None and out < minimum:
        raise StateError(field, f"must be >= {minimum}, got {out!r}")
    return out


def integer(value: Any, field: str, minimum: int | None = None) -> int:
    """``value`` as an int (a float with no fraction is accepted; never a bool), ``>= minimum``."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StateError(field, f"must be an integer, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise StateError(field, f"must be >= {minimum}, got {value}")
    return int(value)


def mapping(value: Any, field: str) -> dict:
    """``value`` (None: empty) as a dict; :class:`StateError` for anything else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StateError(field, f"must be an object, got {type(value).__name__}")
    return value


def positive_scales(value: Any, field: str) -> dict[str, float]:
    """A ``{kpi: scale}`` object whose scales are finite and > 0 (what the rules divide by)."""
    return {str(k): number(v, f"{field}.{k}", positive=True) for k, v in mapping(value, field).items()}


def table(arrays: dict[str, np.ndarray], keys: tuple[str, ...], shape: tuple[int, ...] | None = None) -> tuple:
    """The ``keys`` of a tree ensemble's tables, each 2-D and of one common shape (or ``shape``)."""
    shape = shape or np.shape(arrays[keys[0]])
    for key in keys:
        if np.ndim(arrays[key]) != 2 or np.shape(arrays[key]) != shape or not np.shape(arrays[key])[1]:
            raise StateError(key, f"must be a non-empty (trees, nodes) table of shape {tuple(shape)}, "
                                  f"got {tuple(np.shape(arrays[key]))}")
    return tuple(shape)


def check_trees(left: np.ndarray, right: np.ndarray, leaf: np.ndarray, max_depth: int,
                names: tuple[str, str] = ("left", "right")) -> int:
    """Check padded ``(trees, nodes)`` child tables and return the depth of the deepest leaf.

    From each tree's root (node 0), every split node's two children must be node indices of that tree,
    and every node must be reached at most once: a child pointing back up the tree (a cycle) or to a node
    already reached (a shared subtree) is refused, as is a tree deeper than ``max_depth``. One vectorised
    step per level, each node visited once: bounded whatever the tables hold, so a scorer built on
    tables that pass can walk them with a fixed number of steps.
    """
    n_trees, size = leaf.shape
    leaf = leaf.astype(bool)
    for key, child in zip(names, (left, right)):
        if not np.issubdtype(child.dtype, np.integer):
            raise StateError(key, f"must hold integer node indices, got dtype {child.dtype}")
        bad = ~leaf & ((child < 0) | (child >= size))
        if bad.any():
            tree, node = (int(i[0]) for i in np.nonzero(bad))
            raise StateError(f"{key}[{tree}, {node}]", f"points to node {int(child[tree, node])}, outside the "
                                                       f"tree's nodes 0..{size - 1}")
    seen = np.zeros((n_trees, size), bool)
    seen[:, 0] = True
    frontier = np.stack([np.arange(n_trees), np.zeros(n_trees, np.int64)], axis=1)  # (tree, node) pairs
    depth = 0
    while True:
        inner = frontier[~leaf[frontier[:, 0], frontier[:, 1]]]
        if not len(inner):
            return depth
        depth += 1
        if depth > max_depth:
            raise StateError(f"{names[0]}[{int(inner[0, 0])}]", f"the tree is deeper than the {max_depth} levels "
                                                              "its config allows")
        trees = np.concatenate([inner[:, 0], inner[:, 0]])
        nodes = np.concatenate([left[inner[:, 0], inner[:, 1]], right[inner[:, 0], inner[:, 1]]])
        frontier = np.stack([trees, nodes], axis=1)
        again = seen[trees, nodes] | _duplicated(trees * size + nodes)
        if again.any():
            i = int(np.argmax(again))
            side, parent = names[i // len(inner)], int(inner[i % len(inner), 1])
            raise StateError(f"{side}[{int(trees[i])}, {parent}]",
                             f"points to node {int(nodes[i])}, which the tree reaches already (the child links form "
                             "a cycle or share a node): not a tree")
        seen[trees, nodes] = True


def _duplicated(keys: np.ndarray) -> np.ndarray:
    """True at each repeat of an earlier key."""
    _, first = np.unique(keys, return_index=True)
    out = np.ones(len(keys), bool)
    out[first] = False
    return out
