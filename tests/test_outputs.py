"""Stage outputs are replaced whole or not at all."""
from __future__ import annotations

import stat

import pytest

from pipeline.outputs import replace_dir_atomic, write_json_atomic


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
