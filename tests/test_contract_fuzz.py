"""The data contract on hostile input: epoch units (#13.3) and a property-based fuzz of ingest + validate.

The invariant of the fuzz test: ``kpiguard ingest`` then ``kpiguard validate`` on any generated CSV
either exit 0 with every row valid or quarantined with a rule, or exit 2 with one paragraph on stderr;
never a traceback, and an exit 2 never changes the previous outputs.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import cli
from pipeline.data.contract import DataError, to_utc
from tests.conftest import small_params_dict

BASE_S = 1_767_225_600  # 2026-01-01T00:00:00Z
UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def write_params(root: Path, spec: str, **extra) -> Path:
    raw = small_params_dict(data={"train": spec}, validate={"min_points_per_kpi": 5},
                            windows={"length": 4}, **extra)
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


# -- epoch units (#13.3) -----------------------------------------------------------------------
@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("scheme", ["csv", "aiops"])
def test_numeric_epoch_timestamps_in_any_unit(tmp_path, capsys, unit, scheme):
    ts = (BASE_S + 300 * np.arange(20)) * UNITS[unit]
    if scheme == "csv":
        frame = pd.DataFrame({"kpi_id": "cpu", "timestamp": ts, "value": np.arange(20.0), "label": 0})
    else:
        frame = pd.DataFrame({"timestamp": ts, "value": np.arange(20.0), "label": 0, "KPI ID": "cpu"})
    frame.to_csv(tmp_path / "kpis.csv", index=False)
    params = write_params(tmp_path, f"{scheme}:{tmp_path / 'kpis.csv'}")
    code, err = run_cli(capsys, "ingest", "--params", str(params))
    assert code == 0, err
    raw = pd.read_parquet(tmp_path / "data/raw/train.parquet")
    assert raw["timestamp"].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    assert raw["timestamp"].diff().iloc[1] == pd.Timedelta("5min")


@pytest.mark.parametrize("values,needle", [
    ([BASE_S, BASE_S * 1000], "mix epoch units"),
    ([BASE_S * 10**6, BASE_S * 10**9], "mix epoch units"),
    ([1e19, 2e19], "out of range"),
])
def test_mixed_or_out_of_range_epoch_units_are_one_clear_error(tmp_path, capsys, values, needle):
    frame = pd.DataFrame({"kpi_id": "cpu", "timestamp": values, "value": 1.0})
    frame.to_csv(tmp_path / "kpis.csv", index=False)
    code, err = run_cli(capsys, "ingest", "--params", str(write_params(tmp_path, f"csv:{tmp_path / 'kpis.csv'}")))
    assert code == 2 and "Traceback" not in err
    assert "column 'timestamp'" in err and "epoch_unit" in err and needle in err
    with pytest.raises(DataError, match="epoch_unit"):
        to_utc(pd.Series(values), "x")


# -- the fuzz test -----------------------------------------------------------------------------
KPI_IDS = st.one_of(st.sampled_from(["cpu", "a/b", "a_b", "a b", "", " ", "ü€", "x" * 300, "1", "nan"]),
                    st.text(min_size=0, max_size=12))
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([1e200, -1e250, 0.0, 1e-300, 3.0]),
                   st.integers(-10**20, 10**20))
BAD_CELLS = st.sampled_from(["abc", "", "NaN", "null", "1,5", "--", "2026-13-45", "true"])


@st.composite
def kpi_csv(draw):
    """A CSV (bytes, file suffix) with random columns, dtypes, units, magnitudes, duplicates and ids."""
    n_kpis = draw(st.integers(1, 3))
    n = draw(st.integers(1, 14))
    unit = draw(st.sampled_from(["iso", "iso_tz", "s", "ms", "us", "ns", "mixed", "junk"]))
    rows = []
    for k in range(n_kpis):
        kpi = draw(KPI_IDS)
        for i in range(n):
            t = BASE_S + 300 * i
            ts = {"iso": pd.Timestamp(t, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
                  "iso_tz": pd.Timestamp(t, unit="s", tz="UTC").tz_convert("Asia/Kolkata").isoformat(),
                  "mixed": t * (1000 if i % 2 else 1), "junk": draw(BAD_CELLS) if i == 0 else t,
                  }.get(unit, t * UNITS.get(unit, 1))
            rows.append({"kpi_id": kpi, "timestamp": ts, "value": draw(VALUES), "label": draw(st.sampled_from([0, 1, 0, 2]))})
    frame = pd.DataFrame(rows)
    if draw(st.booleans()):  # some cells of one column broken
        col = draw(st.sampled_from(["value", "label", "timestamp", "kpi_id"]))
        frame[col] = frame[col].astype(object)
        frame.loc[draw(st.integers(0, len(frame) - 1)), col] = draw(BAD_CELLS)
    if draw(st.booleans()):  # duplicated (kpi_id, timestamp) rows
        frame = pd.concat([frame, frame.sample(frac=0.3, random_state=draw(st.integers(0, 9)))])
    if draw(st.booleans()):  # shuffled
        frame = frame.sample(frac=1.0, random_state=1)
    columns = draw(st.lists(st.sampled_from(["kpi_id", "timestamp", "value", "label", "extra"]),
                            min_size=0, max_size=5, unique=True))
    if draw(st.integers(0, 3)):  # mostly the full schema, so that validation is reached
        columns = ["kpi_id", "timestamp", "value", *(["label"] if draw(st.booleans()) else [])]
    frame = frame.assign(extra="x").reindex(columns=columns)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    data = frame.to_csv(index=False).encode(encoding, errors="replace")
    if draw(st.booleans()):
        return gzip.compress(data), ".csv.gz"
    return data, ".csv"


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for d in ("data", "reports") if (root / d).exists()
            for p in sorted((root / d).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    """A workspace whose previous run produced good outputs (which no failing run may change)."""
    root = tmp_path_factory.mktemp("fuzz")
    ts = pd.date_range("2026-01-01", periods=40, freq="5min", tz="UTC")
    pd.DataFrame({"kpi_id": "good", "timestamp": ts, "value": np.arange(40.0), "label": 0}).to_csv(
        root / "good.csv", index=False)
    params = write_params(root, f"csv:{root / 'good.csv'}")
    for stage in ("ingest", "validate"):
        assert cli.main([stage, "--params", str(params)]) == 0
    return root


@settings(max_examples=40, deadline=None)
@given(csv=kpi_csv())
@example(csv=(b"kpi_id,timestamp,value\na,1767225600000,1\na,1767225600,2\n", ".csv"))
def test_fuzz_ingest_and_validate_never_crash_nor_lose_outputs(fuzz_root, capsys, csv):
    data, suffix = csv
    for old in fuzz_root.glob("in*.csv*"):
        old.unlink()
    source = fuzz_root / f"in{suffix}"
    source.write_bytes(data)
    params = str(write_params(fuzz_root, f"csv:{source}"))
    for stage in ("ingest", "validate"):
        before = _snapshot(fuzz_root)
        code, err = run_cli(capsys, stage, "--params", params)
        assert code in (0, 2), err
        assert "Traceback" not in err
        if code == 2:
            message = [l for l in err.splitlines() if l.startswith(f"kpiguard {stage}: error:")]
            assert len(message) == 1, err  # one paragraph, naming what failed
            assert "rule '" in message[0]
            assert _snapshot(fuzz_root) == before  # the previous outputs are untouched
            return
    summary = json.loads((fuzz_root / "reports/validation/summary.json").read_text())["train"]
    raw = pd.read_parquet(fuzz_root / "data/raw/train.parquet")
    valid = pd.read_parquet(fuzz_root / "data/validated/train.parquet")
    quarantine = pd.read_parquet(fuzz_root / "data/quarantine/train.parquet")
    assert len(valid) + len(quarantine) == len(raw) == summary["rows_in"]  # nothing dropped silently
    assert quarantine["rule"].notna().all() and (quarantine["rule"].str.len() > 0).all()
    assert np.isfinite(valid["value"]).all()

