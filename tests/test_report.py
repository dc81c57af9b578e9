"""The daily anomaly report: span extraction, the written files, and the page in a real headless Chromium."""
from __future__ import annotations

import html
import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.batch.report import SPAN_COLUMNS, anomaly_spans, build_report

DAY = "2026-03-01"
CHAMPION = {"model": "kpiguard", "version": "3", "detector": "vae_lstm", "run_id": "abc",
            "run_url": "http://mlflow.example:5000/#/experiments/1/runs/abc",
            "metrics": {"aiops_f1": 0.41, "point_f1": 0.3, "auc_pr": None}}


def frame(kpi: str, flags: list[int], scores: list[float], thresholds: list[float] | float,
          start: str = DAY, freq: str = "5min") -> pd.DataFrame:
    n = len(flags)
    return pd.DataFrame({
        "kpi_id": kpi,
        "timestamp": pd.date_range(start, periods=n, freq=freq, tz="UTC"),
        "value": np.arange(n, dtype=float),
        "score": np.asarray(scores, dtype=float),
        "threshold": np.broadcast_to(np.asarray(thresholds, dtype=float), n),
        "is_anomaly": np.asarray(flags, dtype=bool),
    })


def test_anomaly_spans_exact():
    a = frame("a", [1, 1, 0, 0, 0, 1], [3, 5, 0, 0, 0, 4], 2.0)
    # b's threshold changes inside its second span: severity uses the threshold at the peak (0 -> guard).
    b = frame("b", [1, 0, 0, 1, 1, 0], [9, 0, 0, 1, 6, 0], [3, 3, 3, 0.5, 0, 0])
    # a's last point and b's first are both flagged and adjacent once sorted; shuffled to test ordering.
    scored = pd.concat([b, a]).sample(frac=1, random_state=0)
    ts = pd.date_range(DAY, periods=6, freq="5min", tz="UTC")

    spans = anomaly_spans(scored)

    assert list(spans.columns) == list(SPAN_COLUMNS)
    assert [tuple(r) for r in spans.itertuples(index=False)] == [
        ("b", ts[3], ts[4], 2, 6.0, 0.0, 7.0),   # threshold 0 at the peak: 6 - 0 + 1
        ("b", ts[0], ts[0], 1, 9.0, 3.0, 3.0),
        ("a", ts[0], ts[1], 2, 5.0, 2.0, 2.5),
        ("a", ts[5], ts[5], 1, 4.0, 2.0, 2.0),   # a span that runs to the KPI's last point
    ]


def test_anomaly_spans_empty_and_quiet():
    assert list(anomaly_spans(frame("a", [0, 0], [0, 0], 1.0)).columns) == list(SPAN_COLUMNS)
    assert anomaly_spans(frame("a", [0, 0], [0, 0], 1.0)).empty
    assert anomaly_spans(frame("a", [], [], 1.0)).empty


def day_frame() -> pd.DataFrame:
    """One day at 5 minutes for four KPIs: three flagged (names that need escaping and sanitising), one quiet."""
    n = 288
    t = np.arange(n)
    rng = np.random.default_rng(0)
    parts = []
    for kpi, windows, threshold in (
        ("cpu/host-1", [(100, 105)], np.full(n, 1.0)),
        ("mem host 2", [(20, 22), (200, 230)], np.full(n, 1.0)),
        ("latency<p99>", [(250, 251)], np.where(t < 144, 1.0, 1.5)),
        ("disk", [], np.full(n, 1.0)),
    ):
        score = rng.uniform(0, 0.8, n)
        flags = np.zeros(n, dtype=bool)
        for lo, hi in windows:
            score[lo:hi + 1] = threshold[lo:hi + 1] * 2.5
            flags[lo:hi + 1] = True
        part = frame(kpi, flags.tolist(), score.tolist(), threshold.tolist())
        part["value"] = 50 + 10 * np.sin(t / 20) + np.where(flags, 30, 0) + rng.normal(0, 1, n)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture
def report(tmp_path) -> dict:
    return build_report(day_frame(), DAY, CHAMPION, tmp_path / "reports")


def test_build_report_writes_summary_and_page(report, tmp_path):
    out = tmp_path / "reports"
    assert sorted(p.name for p in out.iterdir()) == [f"{DAY}.html", f"{DAY}.json"]  # no temp files left
    summary = json.loads(Path(report["json"]).read_text())
    assert {k: summary[k] for k in ("day", "kpis_scored", "anomalies", "anomalous_kpis")} == \
        {"day": DAY, "kpis_scored": 4, "anomalies": 4, "anomalous_kpis": 3}
    assert summary["kpis_without_anomalies"] == ["disk"]
    assert summary["champion"] == CHAMPION
    assert [(s["kpi_id"], s["points"]) for s in summary["spans"]] == \
        [("cpu/host-1", 6), ("latency<p99>", 2), ("mem host 2", 3), ("mem host 2", 31)]  # all 2.5x: by KPI, start
    assert summary["spans"][0]["start"] == "2026-03-01T08:20:00+00:00"
    assert summary["spans"][1]["severity"] == pytest.approx(2.5)
    # incidents: mem host 2's spans are 15 h apart, latency's is 100 min after mem's second: four of them,
    # all at 2.5x, latency's peak (2.5 x its 1.5 threshold) the highest, then by start
    assert summary["incident_count"] == 4 and summary["incident_gap"] == "30min"
    assert [(i["kpis"], i["start"][11:16], i["peak_score"], i["severity"]) for i in summary["incidents"]] == [
        (["latency<p99>"], "20:50", 3.75, 2.5), (["mem host 2"], "01:40", 2.5, 2.5),
        (["cpu/host-1"], "08:20", 2.5, 2.5), (["mem host 2"], "16:40", 2.5, 2.5)]
    assert {i["detector"] for i in summary["incidents"]} == {"vae_lstm"}  # the champion's
    peak = summary["incidents"][2]["per_kpi"][0]
    assert peak["expected_from"] == "day_quantiles" and peak["expected_low"] < peak["expected"] < peak["expected_high"]

    page = Path(report["html"]).read_text()
    assert "<title>kpiguard daily anomaly report — 2026-03-01</title>" in page
    assert page.index('<table class="incidents">') < page.index('<table class="spans">')  # incidents first
    incident_rows = page.split('<table class="incidents">')[1].split("</tbody>")[0].split("</tr>")[1:-1]
    assert len(incident_rows) == 4
    assert re.findall(r'<tr[^>]*data-incident="([^"]+)"', page) == [i["id"] for i in summary["incidents"]]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", incident_rows[2])]
    assert cells[:6] == [summary["incidents"][2]["id"], "08:20", "25 min", "cpu/host-1", "2.500", "2.50"]
    assert re.fullmatch(r"[\d.]+ vs [\d.]+ \([\d.]+ – [\d.]+\) day quantiles", cells[6]), cells[6]
    assert '<a href="#kpi-cpu-host-1">cpu/host-1</a>' in incident_rows[2]
    rows = page.split('<table class="spans">')[1].split("<tbody>")[1].split("</tbody>")[0].split("</tr>")[:-1]
    assert len(rows) == 4
    assert [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[0])] == \
        ["cpu/host-1", "2026-03-01 08:20:00", "2026-03-01 08:45:00", "6", "2.500", "1.000", "2.50"]
    assert page.count('<img class="kpi-plot"') == 3
    assert page.count('src="data:image/png;base64,') == 3
    assert "latency&lt;p99&gt;" in page and "latency<p99>" not in page
    ids = re.findall(r'<figure id="([^"]+)"', page)
    assert ids == ["kpi-cpu-host-1", "kpi-latency-p99", "kpi-mem-host-2"]
    assert all(f'href="#{i}"' in page for i in ids)
    assert f'href="{CHAMPION["run_url"]}"' in page and "vae_lstm" in page and "0.410" in page
    assert "<td>disk</td>" not in page and "disk" in page.split("KPIs without anomalies")[1]
    assert not re.search(r'(src|href)="(https?:)?//', page.replace(f'href="{CHAMPION["run_url"]}"', ""))


def test_build_report_caps_plots(tmp_path):
    result = build_report(day_frame(), DAY, CHAMPION, tmp_path, max_plots=1)
    page = Path(result["html"]).read_text()
    assert page.count('<img class="kpi-plot"') == 1
    assert "2 more flagged KPIs not plotted" in page


def test_build_report_empty_and_quiet_days(tmp_path):
    empty = build_report(day_frame().iloc[:0], DAY, None, tmp_path / "empty")
    assert {k: empty[k] for k in ("kpis_scored", "anomalies", "anomalous_kpis", "spans")} == \
        {"kpis_scored": 0, "anomalies": 0, "anomalous_kpis": 0, "spans": []}
    page = Path(empty["html"]).read_text()
    assert "No KPIs were scored for this day." in page and "No champion model recorded." in page
    assert json.loads(Path(empty["json"]).read_text())["kpis_without_anomalies"] == []

    quiet = day_frame().assign(is_anomaly=False)
    champion = {"model": "kpiguard", "run_url": "javascript:alert(1)", "metrics": None}
    result = build_report(quiet, DAY, champion, tmp_path / "quiet")
    page = Path(result["html"]).read_text()
    assert result["anomalies"] == 0 and result["kpis_without_anomalies"] == sorted(quiet["kpi_id"].unique())
    assert "No anomalies: all 4 KPIs stayed within threshold." in page
    assert "kpi-plot" not in page.split("</style>")[1]
    assert "javascript:" not in page and "No validation metrics recorded." in page


def test_build_report_shows_rows_not_scored_and_kpis_whose_interval_changed(tmp_path):
    partition = {"quarantined": 1153, "off_grid_snapped": 2,
                 "quarantined_by_rule": {"on_trained_grid": 1152, "expect_column_values_to_not_be_null": 1},
                 "interval_changed": [{"kpi_id": "cpu<1>", "trained_interval_s": 300.0, "observed_interval_s": 60.0,
                                       "rows_quarantined": 1152}]}
    result = build_report(day_frame(), DAY, CHAMPION, tmp_path, partition=partition)
    written = json.loads(Path(result["json"]).read_text())
    assert {k: written[k] for k in partition} == partition
    page = Path(result["html"]).read_text()
    assert '<tr><td>Rows quarantined (not scored)</td><td class="num">1153</td></tr>' in page
    changed = page.split('<table class="interval-changed">')[1].split("</table>")[0]
    assert [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", changed)] == \
        ["cpu&lt;1&gt;", "300", "60", "1152"]
    assert "<td>on_trained_grid</td>" in page and "2 rows off their KPI's grid" in page
    quiet = build_report(day_frame(), DAY, CHAMPION, tmp_path / "plain")  # no partition: nothing to say
    assert "Rows not scored" not in Path(quiet["html"]).read_text() and quiet["quarantined"] == 0


def test_build_report_shows_the_scorers_checks_as_banners_and_copies_them(tmp_path):
    checks = {"alarm_check": {"alarm_fraction": 0.5, "budget_fraction": 0.0069, "ratio": 72.4, "factor": 10,
                              "mismatch": True},
              "training_range": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-22T00:00:00+00:00",
                                 "outside": True, "days_outside": 38}}
    result = build_report(day_frame(), DAY, CHAMPION, tmp_path / "bad", partition=checks)
    assert {k: json.loads(Path(result["json"]).read_text())[k] for k in checks} == checks
    page = Path(result["html"]).read_text()
    banners = re.findall(r'<p class="banner ([a-z-]+)">(.*?)</p>', page)
    assert [name for name, _ in banners] == ["alarm-check", "training-range"]
    text = [html.unescape(re.sub(r"<[^>]+>", "", body)) for _, body in banners]
    assert text[0].startswith("Alarm rate 72× the budget: likely a model/data mismatch (model trained on other "
                              "data, or data outside the training range). 50.00% of the day's points flagged "
                              "against a budget of 0.69%")
    assert "outside the model's training range by 38 days" in text[1] and "2026-01-22 00:00:00" in text[1]
    assert page.index("banner") < page.index('<table class="summary">')

    fine = {"alarm_check": {**checks["alarm_check"], "ratio": 1.2, "mismatch": False},
            "training_range": {**checks["training_range"], "outside": False, "days_outside": 0}}
    result = build_report(day_frame(), DAY, CHAMPION, tmp_path / "fine", partition=fine)
    assert {k: result[k] for k in fine} == fine  # copied when present, shown only when they fail
    assert 'class="banner' not in Path(result["html"]).read_text()
    assert "alarm_check" not in build_report(day_frame(), DAY, CHAMPION, tmp_path / "old")  # older partitions


def test_build_report_rejects_non_date_day(tmp_path):
    with pytest.raises(ValueError):
        build_report(day_frame(), "../escape", CHAMPION, tmp_path)


@pytest.mark.timeout(180)
def test_report_renders_in_chromium(report, chromium, tmp_path):
    chromium.get(Path(report["html"]).as_uri())  # returns after the load event: images are decoded by then

    severe = [entry for entry in chromium.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    assert chromium.title == "kpiguard daily anomaly report — 2026-03-01"
    widths = chromium.execute_script(
        "return Array.from(document.querySelectorAll('img.kpi-plot'), i => [i.complete, i.naturalWidth]);")
    assert len(widths) == 3 and all(complete and width > 0 for complete, width in widths), widths
    assert chromium.execute_script("return performance.getEntriesByType('resource').length;") == 0
    assert len(chromium.find_elements("css selector", "table.spans tbody tr")) == 4
    assert len(chromium.find_elements("css selector", "table.incidents tbody tr")) == 4
    assert chromium.find_element("css selector", "table.incidents").is_displayed()
    assert not chromium.find_element("css selector", "table.spans").is_displayed()  # folded under the incidents

    # The console check above can fail: an error the page logs does come back as SEVERE.
    chromium.execute_script("console.error('kpiguard-probe');")
    assert any("kpiguard-probe" in e["message"] and e["level"] == "SEVERE" for e in chromium.get_log("browser"))

    shot = tmp_path / "report.png"
    assert chromium.get_screenshot_as_file(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == tuple(chromium.execute_script("return [innerWidth, innerHeight];"))
    assert len(data) > 20_000  # a blank page compresses to a few KB
