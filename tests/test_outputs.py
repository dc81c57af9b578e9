"""Stage outputs are replaced whole or not at all."""
from __future__ import annotations

import stat

import pytest

from pipeline.io.outputs import replace_dir_atomic, write_json_atomic


def test_failed_write_leaves_the_previous_output(tmp_path):
    target = tmp_path / "out"
    replace_dir_atomic(target, lambda d: (d / "a.txt").write_text("first"))

    def broken(d):
        (d / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        replace_dir_atomic(target, broken)
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_rerun_replaces_and_files_are_readable(tmp_path):
    target = tmp_path / "out"
    replace_dir_atomic(target, lambda d: (d / "old.txt").write_text("x"))
    replace_dir_atomic(target, lambda d: (d / "new.txt").write_text("y"))
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    path = write_json_atomic(tmp_path / "m.json", {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert path.stat().st_mode & stat.S_IRGRP and target.stat().st_mode & stat.S_IRGRP


# -- concurrency and crashes (issue #13) -------------------------------------------------------
import multiprocessing
import os

from pipeline.io import outputs

FORK = multiprocessing.get_context("fork")
FILES = ("scores.parquet", "quarantine.parquet", "_meta.json")


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _write_partition(tag: str):
    def write(tmp):
        for name in FILES:
            (tmp / name).write_text(tag)
    return write


def _assert_complete(target, allowed: set[str]):
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    tags = {(target / name).read_text() for name in FILES}
    assert len(tags) == 1 and tags <= allowed, tags  # one writer's whole output, never a mix


def _replace_many(target: str, worker: int, n: int, go) -> None:
    go.wait(30)  # all four start together, so their swaps really overlap
    for i in range(n):
        outputs.replace_dir_atomic(target, _write_partition(f"{worker}-{i}"))


def test_concurrent_replaces_of_one_target_all_succeed(tmp_path):
    """4 processes x 50 replaces of one partition: every call succeeds, nothing is orphaned."""
    target = tmp_path / "date=2026-01-05"
    go = FORK.Event()
    procs = [FORK.Process(target=_replace_many, args=(str(target), w, 50, go)) for w in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    _assert_complete(target, {f"{w}-49" for w in range(4)})
    assert _hidden(tmp_path) == []


def _killed_at(k: int, patch, run) -> int:
    """Run ``run()`` in a child whose ``k``-th call of a patched step is ``os._exit(9)``; its exit code."""
    def child():
        calls = {"n": 0}

        def dying(fn):
            def wrapper(*a, **kw):
                calls["n"] += 1
                if calls["n"] == k:
                    os._exit(9)
                return fn(*a, **kw)
            return wrapper

        patch(dying)
        run()

    p = FORK.Process(target=child)
    p.start()
    p.join(60)
    return p.exitcode


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_dir_killed_at_every_step(tmp_path, monkeypatch, exchange):
    if not exchange:  # the fallback used where renameat2 is missing
        monkeypatch.setattr(outputs, "_RENAMEAT2", None)
    elif outputs._RENAMEAT2 is None:
        pytest.skip("no renameat2 on this platform")
    target = tmp_path / "out"

    def patch(dying):
        outputs.exchange = dying(outputs.exchange)
        outputs._remove = dying(outputs._remove)
        os.replace = dying(os.replace)
        outputs.shutil.rmtree = dying(outputs.shutil.rmtree)

    k = 0
    while True:
        k += 1
        assert k < 30, "the writer never finished"
        outputs.replace_dir_atomic(target, _write_partition("old"))
        code = _killed_at(k, patch, lambda: outputs.replace_dir_atomic(target, _write_partition("new")))
        if exchange:  # a reader sees the old or the new output at every step
            _assert_complete(target, {"old", "new"})
        outputs.replace_dir_atomic(target, _write_partition("rerun"))  # the rerun repairs and cleans up
        _assert_complete(target, {"rerun"})
        assert _hidden(tmp_path) == [], (k, code)
        if code == 0:
            break
    assert k > 2  # it was killed at several steps before it got through


def test_write_bytes_killed_at_every_step(tmp_path):
    path = tmp_path / "summary.json"

    def patch(dying):
        os.replace = dying(os.replace)
        os.fsync = dying(os.fsync)
        os.chmod = dying(os.chmod)

    k = 0
    while True:
        k += 1
        assert k < 20
        outputs.write_text_atomic(path, "old")
        code = _killed_at(k, patch, lambda: outputs.write_text_atomic(path, "new"))
        assert path.read_text() in ("old", "new")
        outputs.write_text_atomic(path, "rerun")
        assert path.read_text() == "rerun" and _hidden(tmp_path) == [], k
        if code == 0:
            break
    assert k > 2


def test_safe_stem_is_bounded_and_collision_free():
    ids = ["a/b", "a_b", "a b", "x" * 5000, "", "..", "ä/ö"]
    stems = [outputs.safe_stem(i) for i in ids]
    assert len(set(stems)) == len(ids)
    assert all(len(s.encode()) <= 64 and "/" not in s and not s.startswith(".") for s in stems)
    assert outputs.safe_stem("cpu") == outputs.safe_stem("cpu")
