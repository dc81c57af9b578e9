"""Reviews teach the champion (issue 23): with too few reviewed events the label-free default serves; once the
verdicts are enough, the supervised row competes and takes over. And the simulated-review benchmark
(`python -m pipeline.tools.simulate_review`): its reviewer answers from the hidden labels only."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import yaml

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, VALUE
from pipeline import cli
from pipeline.data.review_labels import CONFIRMED, FALSE_ALARM
from pipeline.eval.thresholds import make_threshold
from pipeline.review.store import ReviewStore
from pipeline.tools import simulate_review
from tests.conftest import REPO, small_params_dict

DEFAULT = "windowed_gaussian"  # the label-free default here: cheap, and a reference row a supervised one beats


def incident(kpi: str, start, end) -> dict:
    """An incident record as the daily report has it (the fields a verdict reads)."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    return {"id": f"inc-{start:%Y%m%d-%H%M}-{abs(hash((kpi, start))) % 16**8:08x}", "start": start.isoformat(),
            "end": end.isoformat(), "kpis": [kpi], "per_kpi": [{"kpi_id": kpi, "start": start.isoformat(),
                                                                "end": end.isoformat()}]}


def unlabelled_feed(tmp_path):
    """(params file, the hidden truth): a synthetic feed written without its labels, a review store beside it."""
    from pipeline.data import synthetic
    from pipeline.params import parse_params

    raw = small_params_dict()
    raw["synthetic"].update({"n_kpis": 4, "end": "2026-01-22", "anomalies_per_week": 14})
    truth = synthetic.generate(parse_params(raw).synthetic)
    truth.drop(columns=LABEL).to_csv(tmp_path / "kpis.csv", index=False)
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["data"]["train"] = f"csv:{tmp_path / 'kpis.csv'}"
    raw["train"]["detectors"] = [DEFAULT, "stacked_gbdt"]
    raw["evaluate"].update({"default_detector": DEFAULT, "min_events": 10})
    raw["reviews"]["store"] = f"sqlite:///{tmp_path / 'reviews.db'}"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path), truth


def retrain(params: str, tmp_path) -> dict:
    """The retrain's stages, as `dvc repro` runs them: labels → ingest → validate → windows → train → evaluate."""
    assert cli.main(["review", "export", "--params", params]) == 0
    for stage in ("ingest", "validate", "windows", "train"):
        assert cli.main([stage, "--params", params, "--no-progress"]) == 0
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--params", params], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads((tmp_path / "reports/evaluation/metrics.json").read_text())


def truth_segments(truth: pd.DataFrame) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    out = []
    for kpi, part in truth.groupby(KPI_ID):
        lab = part[LABEL].to_numpy() == 1
        starts = np.flatnonzero(lab & ~np.r_[False, lab[:-1]])
        ends = np.flatnonzero(lab & ~np.r_[lab[1:], False])
        stamps = pd.to_datetime(part[TIMESTAMP], utc=True).reset_index(drop=True)
        out += [(str(kpi), stamps[a], stamps[b])
                for a, b in zip(starts, ends)]
    return out


def test_the_champion_switches_from_the_default_to_a_supervised_row_once_the_verdicts_are_enough(tmp_path, capsys):
    params, truth = unlabelled_feed(tmp_path)
    segments = truth_segments(truth)
    days = sorted({str(d.date()) for d in truth[TIMESTAMP]})
    store = ReviewStore(f"sqlite:///{tmp_path / 'reviews.db'}")

    # a first look: three confirmed incidents on the first day reviewed -> fewer events than the gate needs
    first_day = [s for s in segments if str(s[1].date()) == days[0]][:3]
    for kpi, start, end in first_day:
        store.add_verdict(incident(kpi, start, end), CONFIRMED, "alice")
    store.mark_reviewed(days[0], "alice")
    report = retrain(params, tmp_path)
    manifest = json.loads((tmp_path / "data/raw/manifest.json").read_text())
    assert manifest["train"]["reviews"]["applied"] is False
    assert "fewer than the 50" in manifest["train"]["reviews"]["reason"]  # ceil(min_events 10 / val_fraction 0.2)
    assert report["selection"]["label_free"] and report["best_on_val"] == DEFAULT
    assert report["detectors"]["stacked_gbdt"]["status"] == "skipped"

    # every day reviewed: each anomaly confirmed, two false alarms dismissed -> enough events, labels decide
    for kpi, start, end in segments:
        if (kpi, start, end) not in first_day:
            store.add_verdict(incident(kpi, start, end), CONFIRMED, "bob")
    normal = truth[(truth[LABEL] == 0)].iloc[[100, 2000]]
    for row in normal.itertuples(index=False):
        store.add_verdict(incident(row.kpi_id, row.timestamp, row.timestamp), FALSE_ALARM, "bob")
    for day in days:
        store.mark_reviewed(day, "bob")
    store.close()
    report = retrain(params, tmp_path)
    reviews = json.loads((tmp_path / "data/raw/manifest.json").read_text())["train"]["reviews"]
    assert reviews["applied"] is True and reviews["events"] >= 50 and reviews["unreviewed_rows"] == 0
    assert not report["selection"]["label_free"]
    assert report["detectors"]["stacked_gbdt"]["status"] == "ok"
    comparison = report["selection"]["comparison"]
    assert report["best_on_val"] == "stacked_gbdt", report["selection"]["reason"]
    assert comparison["better"] and comparison["difference_interval"][0] > 0  # beyond the noise, not by a hair


def test_the_simulated_reviewer_answers_from_the_hidden_labels(tmp_path):
    """One KPI, 5-minute points: an alarm run inside a labelled segment (confirmed), one on normal points
    (dismissed), a labelled segment no alarm touches (a miss: always reported at p=1, never at p=0)."""
    stamps = pd.date_range("2026-03-02", periods=288, freq="5min", tz="UTC")
    label = np.zeros(288, dtype="int8")
    label[[50, 51, 52, 53]] = 1     # caught by the alarm at 52
    label[[200, 201]] = 1           # missed
    alarms = np.zeros(288, dtype=bool)
    alarms[[52, 120, 121]] = True  # 120-121: a false alarm
    part = pd.DataFrame({KPI_ID: "cpu", TIMESTAMP: stamps, VALUE: np.arange(288.0), LABEL: label,
                         MISSING: np.zeros(288, dtype=bool)})
    scores = np.where(alarms, 9.0, 0.0)
    threshold = make_threshold({"method": "fixed", "value": 5.0})
    threshold.fit(scores)
    for probability, reported in ((1.0, 1), (0.0, 0)):
        with ReviewStore(f"sqlite:///{tmp_path / f'r{probability}.db'}") as store:
            counts = simulate_review.review_round(store, part, scores, alarms, threshold, "30min", probability,
                                                  np.random.default_rng(0), ["2026-03-02"], extent=True)
            verdicts = store.verdicts().set_index("start_at")["verdict"].to_dict()
            misses, days = store.misses(), store.reviewed_days()
        assert counts == {CONFIRMED: 1, FALSE_ALARM: 1, "incidents": 2, "misses_reported": reported,
                          "misses_unreported": 1 - reported, "extents_marked": 0}
        assert {pd.Timestamp(k, tz="UTC") if pd.Timestamp(k).tzinfo is None else pd.Timestamp(k): v
                for k, v in verdicts.items()} == {stamps[50]: CONFIRMED, stamps[120]: FALSE_ALARM}  # the anomaly began at 50
        assert len(misses) == reported and days == ["2026-03-02"]
        if reported:
            assert pd.Timestamp(misses["start_at"].iloc[0]).tz_localize(None) == stamps[200].tz_localize(None)
            assert pd.Timestamp(misses["end_at"].iloc[0]).tz_localize(None) == stamps[201].tz_localize(None)


def test_the_timeline_aligns_final_blocks_on_whole_weeks_and_leaves_out_short_kpis():
    day = pd.Timedelta("1D")
    long = pd.DataFrame({KPI_ID: "long", TIMESTAMP: pd.date_range("2026-01-01", "2026-04-11", freq="1h", tz="UTC")})
    late = long.assign(**{KPI_ID: "late", TIMESTAMP: long[TIMESTAMP] + 45 * day})  # same length, 45 days later
    short = pd.DataFrame({KPI_ID: "short", TIMESTAMP: pd.date_range("2026-02-01", "2026-02-20", freq="1h", tz="UTC")})
    plan = simulate_review.timeline(pd.concat([long, late, short]), rounds=4, length=pd.Timedelta("7D"),
                                    history=pd.Timedelta("30D"), final_fraction=0.3, shift_unit=pd.Timedelta("7D"),
                                    min_history=pd.Timedelta("7D"))
    assert set(plan["shifts"]) == {"long", "late"} and "short" in plan["dropped"]
    assert plan["shifts"]["late"] - plan["shifts"]["long"] == -42 * day  # 45 days apart: the nearest whole weeks
    assert all(s % (7 * day) == pd.Timedelta(0) for s in plan["shifts"].values())
    assert plan["final"] == plan["rounds"][-1] and plan["final"] == plan["final"].normalize()
    assert [b - a for a, b in zip(plan["rounds"], plan["rounds"][1:])] == [7 * day] * 4
    assert plan["start"] == plan["rounds"][0] - 30 * day


def test_the_simulation_runs_the_review_loop_end_to_end(tmp_path):
    out = tmp_path / "sim"
    argv = ["--train", "synthetic:", "--out", str(out), "--rounds", "2", "--round-length", "3D", "--history", "all",
            "--shift-unit", "1D", "--detectors", f"{DEFAULT},stacked_gbdt", "--params", str(REPO / "params.yaml"),
            "-S", "synthetic.n_kpis=3", "-S", "synthetic.end=2026-01-20", "-S", "synthetic.anomalies_per_week=21",
            "-S", f"evaluate.default_detector={DEFAULT}", "-S", "evaluate.min_events=4",
            "-S", "windows.train_fraction=0.8", "-S", "train.threads=1"]
    assert simulate_review.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["label_free"] and rounds[0]["champion"] == DEFAULT  # no verdict yet: the default serves
    assert rounds[0]["labels"]["applied"] is False
    assert rounds[-1]["labels"]["applied"] is True and not rounds[-1]["label_free"]  # the verdicts decide
    assert report["ceiling"]["status"] == "ok" and 0 < report["ceiling"]["final"]["aiops_f1"] <= 1
    assert report["metric"] == "aiops_f1" and report["ceiling"]["final"]["metric"] == report["ceiling"]["final"]["aiops_f1"]
    for row in rounds:
        assert 0 <= row["final"]["aiops_f1"] <= 1
    # what the store holds is what the rounds say they gave, and every confirmation is a real anomaly
    with ReviewStore(f"sqlite:///{out / 'reviews.db'}") as store:
        verdicts, misses, days = store.verdicts(), store.misses(), store.reviewed_days()
    given = [r["review"] for r in rounds[:-1]]
    assert (verdicts["verdict"] == CONFIRMED).sum() == sum(g[CONFIRMED] for g in given)
    assert (verdicts["verdict"] == FALSE_ALARM).sum() == sum(g[FALSE_ALARM] for g in given)
    assert len(misses) == sum(g["misses_reported"] for g in given) and len(days) == 6
    md = (out / "results.md").read_text()
    assert "| after reviews | served |" in md and "Ceiling: `stacked_gbdt`" in md
    # every row's final-block figure (oracle), served row included, and the same when recomputed from the files
    for row in rounds:
        assert row["final_by_detector_oracle"][row["champion"]] == row["final"]["metric"]
    low, high = report["ceiling"]["final"]["interval"]  # the ceiling's figure with its bootstrap interval
    assert low <= report["ceiling"]["final"]["metric"] <= high
    assert all(len(row["final"]["share_interval"]) == 2 for row in rounds)
    # recomputed from the saved scores: the same figures
    assert simulate_review.main(["--rescore", "--out", str(out), *argv[argv.index("--params"):]]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["final_by_detector_oracle"] for r in again["rounds"]] == [r["final_by_detector_oracle"] for r in rounds]
    assert [r["final"] for r in again["rounds"]] == [r["final"] for r in rounds]
    assert again["ceiling"]["final"] == report["ceiling"]["final"]


def test_a_confirmation_can_carry_the_anomalys_own_extent(tmp_path):
    """The label covers where the anomaly began (before the alarm), not only the alarms' span; an extent
    that misses the incident's span is refused with its rule."""
    from pipeline.data.review_labels import label_spans
    from pipeline.errors import ReviewError

    found = incident("cpu", "2026-03-02T10:20Z", "2026-03-02T10:30Z")
    with ReviewStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        store.add_verdict(found, CONFIRMED, "alice", start="2026-03-02T10:05Z", end="2026-03-02T10:40Z")
        try:
            store.add_verdict(found, CONFIRMED, "alice", start="2026-03-02T11:00Z", end="2026-03-02T11:10Z")
            raise AssertionError("an extent that does not overlap the incident was stored")
        except ReviewError as exc:
            assert exc.rule == "extent_overlaps_incident" and "does not overlap" in str(exc)
        spans = label_spans(store.verdicts(), store.misses(), store.reviewed_days())
    assert len(spans) == 1 and spans["label"].iloc[0] == 1
    assert spans["start"].iloc[0] == pd.Timestamp("2026-03-02T10:05Z")
    assert spans["end"].iloc[0] == pd.Timestamp("2026-03-02T10:40Z")


def test_with_extents_a_long_confirmed_incident_labels_each_anomaly_not_the_stretch_between(tmp_path):
    """One incident (alarms joined across 30 min) overlaps two labelled segments: the confirmation covers the
    first segment, the second is marked as its own range, and the normal points between stay unlabelled 1."""
    stamps = pd.date_range("2026-03-02", periods=288, freq="5min", tz="UTC")
    label = np.zeros(288, dtype="int8")
    label[[40, 41, 42]] = 1
    label[[46, 47]] = 1
    alarms = np.zeros(288, dtype=bool)
    alarms[[42, 44, 46]] = True  # within the 30-minute incident gap: one incident 42-46
    part = pd.DataFrame({KPI_ID: "cpu", TIMESTAMP: stamps, VALUE: np.arange(288.0), LABEL: label,
                         MISSING: np.zeros(288, dtype=bool)})
    scores = np.where(alarms, 9.0, 0.0)
    threshold = make_threshold({"method": "fixed", "value": 5.0})
    threshold.fit(scores)
    with ReviewStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        counts = simulate_review.review_round(store, part, scores, alarms, threshold, "30min", 0.0,
                                              np.random.default_rng(0), ["2026-03-02"], extent=True)
        verdicts, misses = store.verdicts(), store.misses()
    assert counts[CONFIRMED] == 1 and counts["incidents"] == 1 and counts["extents_marked"] == 1
    naive = lambda v: pd.Timestamp(v).tz_localize(None) if pd.Timestamp(v).tzinfo else pd.Timestamp(v)  # noqa: E731
    assert (naive(verdicts["start_at"].iloc[0]), naive(verdicts["end_at"].iloc[0])) == \
        (naive(stamps[40]), naive(stamps[42]))
    assert (naive(misses["start_at"].iloc[0]), naive(misses["end_at"].iloc[0])) == (naive(stamps[46]), naive(stamps[47]))


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys):
    base = ["--out", str(tmp_path / "sim"), "--params", str(REPO / "params.yaml")]
    cases = [(["--train", "synthetic:", "--metric", "auc_roc"], "--metric auc_roc"),
             (["--train", "synthetic:", "--round-length", "bogus"], "--round-length 'bogus' is not a duration"),
             (["--train", "synthetic:", "-S", "synthetic.end=2026-01-10"], "no KPI has 7 days"),
             (["--rescore"], "no finished simulation to rescore"),
             ([], "--train is required")]
    for args, message in cases:
        assert simulate_review.main([*args, *base]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
