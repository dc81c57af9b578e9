"""Failures that reach the command line are one paragraph and a documented exit code, never a traceback,
and leave no partial output (issue #25: bad overrides, outputs that cannot be written)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import cli


def _run(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("value", ["windows.length=[", "windows.length={a: 1", "windows.length='open",
                                   "windows.length=- a\n b: c"])
def test_an_override_that_is_not_yaml_is_one_clear_error(capsys, value):
    code, text = _run(capsys, "windows", "-S", value)
    assert code == 2, text
    assert "Traceback" not in text and "not valid YAML" in text and repr(value) in text


def test_an_override_with_a_python_tag_is_refused_and_never_run(capsys, tmp_path):
    marker = tmp_path / "ran"
    value = f'windows.length=!!python/object/apply:os.system ["touch {marker}"]'
    code, text = _run(capsys, "windows", "-S", value)
    assert code == 2 and "Traceback" not in text and "not valid YAML" in text, text
    assert not marker.exists()


@pytest.mark.parametrize("value", ["storage.max_read_mb=.inf", "storage.max_read_mb=.nan",
                                   "storage.read_timeout_s=.inf", "score.max_quarantined_fraction=.nan"])
def test_a_bound_cannot_be_switched_off_with_infinity_or_nan(capsys, value):
    code, text = _run(capsys, "windows", "-S", value)
    assert code == 2 and "Traceback" not in text, text
    assert value.split("=")[0] in text and "finite" in text


def test_score_refuses_an_output_that_is_a_file_before_any_work(capsys, tmp_path):
    existing = tmp_path / "scores"
    existing.write_text("not a directory")
    below = existing / "deeper"
    for output in (existing, below):
        code, text = _run(capsys, "score", "--date", "2026-01-05", "--output", str(output),
                          "--model-uri", "models:/never-loaded@champion")
        assert code == 2 and "Traceback" not in text, text
        assert "output_is_directory" in text and str(output) in text
        # refused first: the model (which does not exist) was never looked up
        assert "model_exists" not in text and "tracking_server" not in text
    assert existing.read_text() == "not a directory"


def test_an_internal_error_is_one_paragraph_and_exit_70(capsys, monkeypatch):
    from pipeline.stages import windows

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(windows, "run", bug)
    code, text = _run(capsys, "windows")
    assert code == 70 and "Traceback" not in text
    assert "internal error" in text and "ZeroDivisionError: a bug" in text and "-v" in text
    code, text = _run(capsys, "-v", "windows")  # -v shows where it happened
    assert code == 70 and "Traceback" in text


def test_an_oserror_is_one_paragraph_naming_the_file(capsys, monkeypatch, tmp_path):
    from pipeline.stages import windows

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data"))

    monkeypatch.setattr(windows, "run", unreadable)
    code, text = _run(capsys, "windows")
    assert code == 2 and "Traceback" not in text
    assert f"{tmp_path / 'data'}: Permission denied" in text
    assert Path(tmp_path).exists()
