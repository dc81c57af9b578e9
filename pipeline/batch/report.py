"""Daily anomaly report: what the champion model flagged on one day, for the on-call engineer.

Input is one day of scored points (``kpi_id``, ``timestamp``, ``value`` in original units, ``score``,
``threshold``, ``is_anomaly``) and the champion model's registry entry. Output, in ``out_dir``:

- ``<day>.html``: one self-contained page (inline CSS, plots as base64 PNG data URIs, nothing fetched),
  so it can be mailed, attached to a ticket or opened from disk and still show everything;
- ``<day>.json``: the same summary for machines (counts, champion, incidents and spans with ISO timestamps).

An *anomaly span* is a run of consecutive flagged points of one KPI. One real anomaly shows as many
spans (on several KPIs, split wherever the score dips under threshold for a point), so the on-call
engineer triages *incidents* (:mod:`pipeline.batch.incidents`: spans at most ``score.incident_gap``
apart, on one KPI or across KPIs, joined), which the report lists first, most severe first; the spans
stay in the JSON and, folded, on the page. Incidents that the reviewers' mute rules mute
(:mod:`pipeline.data.review_mutes`) are listed apart, folded under "Muted" with the rule that mutes each.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, TIMESTAMP, VALUE
from pipeline.batch import incidents as incidents_mod
# Spans are what incidents are made of, so they live there; SPAN_COLUMNS is imported from here too.
from pipeline.batch.incidents import IS_ANOMALY, SCORE, SPAN_COLUMNS, THRESHOLD, anomaly_spans, span_records  # noqa: F401
from pipeline.data import review_mutes as mutes_mod
from pipeline.io.outputs import write_json_atomic, write_text_atomic
from pipeline.params import ScoreParams

INCIDENT_GAP = ScoreParams.model_fields["incident_gap"].default
# Keys of the partition's _meta.json copied into the report as they are: the scorer's checks of the day.
CHECKS = ("alarm_check", "training_range")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary td:first-child { font-weight: 600; }
.severe { background: #fde2e2; }
figure { margin: 1em 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
img.kpi-plot { max-width: 100%; height: auto; border: 1px solid #eee; }
.quiet { color: #555; }
.banner { background: #fff3cd; border: 1px solid #e0b84c; border-radius: 4px; padding: .6em 1em; margin: 1em 0; }
.banner strong { color: #7a4b00; }
table.incidents td:nth-child(-n+3) { white-space: nowrap; } .from { color: #777; font-size: .85em; }
details summary { cursor: pointer; margin: .5em 0; }
"""


def build_report(scored: pd.DataFrame, day: str, champion: dict | None, out_dir: str | Path,
                 max_plots: int = 20, partition: dict | None = None, incident_gap: str = INCIDENT_GAP,
                 mutes: list[dict] | None = None, mutes_unavailable: str | None = None) -> dict:
    """Write ``<out_dir>/<day>.html`` and ``<out_dir>/<day>.json``; return the summary with both paths.

    Plots are drawn for the ``max_plots`` KPIs whose worst span is most severe. ``partition``: the
    day's partition metadata (:func:`pipeline.batch.score.read_meta`), whose counts of rows
    not scored (quarantined, by rule), snapped to the grid, and KPIs whose interval changed the
    report shows, so the on-call engineer sees what was not looked at, and whose checks of the day
    (``alarm_check``, ``training_range``) it copies and shows as a banner when they fail.
    ``incident_gap``: ``score.incident_gap`` (:mod:`pipeline.batch.incidents`). ``mutes``: the review
    store's active mute rules (:mod:`pipeline.data.review_mutes`); the incidents they mute are listed apart,
    as ``muted_incidents`` (each naming its rules in ``muted_by``), not among ``incidents``.
    ``mutes_unavailable``: why the rules could not be read, shown on the page.
    """
    day = dt.date.fromisoformat(day).isoformat()  # also keeps the file names inside out_dir
    scored = scored.assign(**{TIMESTAMP: pd.to_datetime(scored[TIMESTAMP], utc=True)})
    spans = anomaly_spans(scored)
    champion = champion or {}
    found, muted = mutes_mod.apply_mutes(incidents_mod.incidents(scored, incident_gap, champion.get("detector"),
                                                                 spans=spans), mutes or [])
    kpis = sorted(scored[KPI_ID].astype(str).unique())
    flagged = list(dict.fromkeys(spans["kpi_id"].astype(str)))  # most severe first
    quiet = sorted(set(kpis) - set(flagged))
    partition = partition or {}
    summary = {
        "day": day,
        "kpis_scored": len(kpis),
        "incident_count": len(found),
        "anomalies": len(spans),
        "anomalous_kpis": len(flagged),
        "champion": champion,
        "incident_gap": str(incident_gap),
        "incidents": found,
        "muted_incidents": muted,
        "mute_rules": len(mutes or []),
        **({"mutes_unavailable": mutes_unavailable} if mutes_unavailable else {}),
        "spans": span_records(spans),
        "kpis_without_anomalies": quiet,
        **_not_scored(partition),
        **{key: partition[key] for key in CHECKS if partition.get(key) is not None},
    }
    ids, span_ids = scored[KPI_ID].astype(str), spans["kpi_id"].astype(str)
    plots = {kpi: plot_kpi(scored[ids == kpi], spans[span_ids == kpi]) for kpi in flagged[:max_plots]}
    out_dir = Path(out_dir)
    html_path = write_text_atomic(out_dir / f"{day}.html", render_html(summary, plots))
    json_path = write_json_atomic(out_dir / f"{day}.json", summary)
    return {**summary, "html": str(html_path), "json": str(json_path)}


def _not_scored(partition: dict) -> dict:
    return {"quarantined": int(partition.get("quarantined") or 0),
            "quarantined_by_rule": dict(partition.get("quarantined_by_rule") or {}),
            "off_grid_snapped": int(partition.get("off_grid_snapped") or 0),
            "interval_changed": list(partition.get("interval_changed") or [])}


def plot_kpi(part: pd.DataFrame, spans: pd.DataFrame) -> str:
    """Value with spans shaded (and the expected band, where the scores carry one) over score with its
    threshold, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    part = part.sort_values(TIMESTAMP)
    ts = part[TIMESTAMP]
    # Shade half a sampling step either side of each span, so a one-point span is still visible.
    half = ts.diff().median() / 2 if len(ts) > 1 else pd.Timedelta(0)
    half = half if pd.notna(half) else pd.Timedelta(0)
    fig, (ax_v, ax_s) = plt.subplots(2, 1, figsize=(11, 3.6), sharex=True, height_ratios=(3, 2))
    ax_v.plot(ts, part[VALUE], lw=0.8, color="black")
    flagged = part[part[IS_ANOMALY].astype(bool)]
    ax_v.scatter(flagged[TIMESTAMP], flagged[VALUE], s=8, color="red", zorder=3, label="flagged point")
    for start, end in zip(spans["start"], spans["end"]):
        ax_v.axvspan(start - half, end + half, color="red", alpha=0.2, lw=0)
    if {"expected_low", "expected_high"} <= set(part.columns) and part["expected_high"].notna().any():
        ax_v.fill_between(ts, part["expected_low"].astype(float), part["expected_high"].astype(float),
                          color="tab:blue", alpha=0.15, lw=0, label="expected band")
    ax_v.set_ylabel("value")
    ax_v.legend(loc="upper right", fontsize=7)
    ax_s.plot(ts, part[SCORE], lw=0.8, color="tab:blue", label="score")
    threshold = part[THRESHOLD]
    if threshold.nunique() > 1:
        ax_s.step(ts, threshold, where="post", color="red", lw=0.8, ls="--", label="threshold")
    else:
        ax_s.axhline(threshold.iloc[0], color="red", lw=0.8, ls="--", label="threshold")
    ax_s.set_ylabel("calibrated score")
    ax_s.legend(loc="upper right", fontsize=7)
    locator = mdates.AutoDateLocator()
    ax_s.xaxis.set_major_locator(locator)
    ax_s.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(summary: dict, plots: dict[str, str]) -> str:
    """The report page from ``build_report``'s summary and ``{kpi: PNG data URI}`` (in display order)."""
    e = html.escape
    day = summary["day"]
    anchors = _anchors(plots)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page must not fetch anything
        f"<title>kpiguard daily anomaly report — {e(day)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>kpiguard daily anomaly report — {e(day)}</h1>",
        *_banners(summary),
        '<table class="summary">',
        f'<tr><td>KPIs scored</td><td class="num">{summary["kpis_scored"]}</td></tr>',
        f'<tr><td>Incidents</td><td class="num">{summary.get("incident_count", 0)}</td></tr>',
        *([f'<tr><td>Muted incidents (mute rules)</td><td class="num">{len(summary["muted_incidents"])}</td></tr>']
          if summary.get("muted_incidents") else []),
        f'<tr><td>KPIs flagged</td><td class="num">{summary["anomalous_kpis"]}</td></tr>',
        f'<tr><td>Anomaly spans</td><td class="num">{summary["anomalies"]}</td></tr>',
        f'<tr><td>Rows quarantined (not scored)</td><td class="num">{summary.get("quarantined", 0)}</td></tr>',
        "</table>",
        "<h2>Incidents</h2>",
    ]
    if not summary["kpis_scored"]:
        parts.append('<p class="quiet">No KPIs were scored for this day.</p>')
    elif not summary["spans"]:
        parts.append(f'<p class="quiet">No anomalies: all {summary["kpis_scored"]} KPIs stayed within threshold.</p>')
    else:
        parts += [*_incidents_html(summary, anchors), *_muted_html(summary, anchors), *_spans_html(summary, anchors)]
    parts += [*_not_scored_html(summary), *_champion_html(summary["champion"])]
    if plots:
        parts.append("<h2>Flagged KPIs</h2>")
        for kpi, uri in plots.items():
            parts.append(f'<figure id="{anchors[kpi]}"><figcaption>{e(kpi)}</figcaption>'
                         f'<img class="kpi-plot" src="{uri}" alt="{e(kpi, quote=True)}: value with anomaly '
                         f'spans shaded, and score against threshold"></figure>')
    omitted = summary["anomalous_kpis"] - len(plots)
    if omitted > 0:
        parts.append(f'<p class="quiet">{omitted} more flagged KPI{"s" if omitted != 1 else ""} not plotted '
                     "(see the table).</p>")
    if summary["kpis_without_anomalies"]:
        parts += ["<h2>KPIs without anomalies</h2>",
                  f'<p class="quiet">{e(", ".join(summary["kpis_without_anomalies"]))}</p>']
    parts.append("</body></html>\n")
    return "\n".join(parts)


_SCORES_NOTE = ("Times are UTC. Scores are calibrated per KPI: the surprise -log10(tail probability) of the "
                "detector's score given that KPI's history (5 = a 1-in-100,000 score), so they compare across "
                "KPIs. Severity is the peak score over its KPI's threshold (1 = at threshold); rows at twice the "
                "threshold or more highlighted.")


def _incidents_html(summary: dict, anchors: dict[str, str]) -> list[str]:
    """The incidents table, most severe first: what the on-call engineer triages."""
    e = html.escape
    found = summary.get("incidents") or []
    _, low, high = incidents_mod.BAND_QUANTILES
    out = [f'<p class="quiet">{_SCORES_NOTE} An incident joins the anomaly spans of one KPI, and of several '
           f"KPIs, that lie at most {e(summary.get('incident_gap') or INCIDENT_GAP)} apart; most severe first. "
           "Observed and expected are the values at each KPI's peak, in the KPI's units; the band is the "
           "model's, or, marked <span class=\"from\">day quantiles</span>, the "
           f"{_q(low)}–{_q(high)} % range (median: expected) of the KPI's unflagged values of the "
           f"{e(_duration(incidents_mod.BAND_WINDOW.total_seconds()))} before it.</p>",
           '<table class="incidents"><thead><tr><th>incident</th><th>start (UTC)</th><th>duration</th><th>KPIs</th>'
           "<th>peak score</th><th>severity</th><th>observed vs expected (band)</th></tr></thead><tbody>"]
    for inc in found:
        out.append(_incident_row(inc, anchors))
    out.append("</tbody></table>")
    if not found:
        out.append('<p class="quiet">No incidents beside the muted ones below.</p>')
    return out


def _incident_row(inc: dict, anchors: dict[str, str], extra: str = "") -> str:
    e = html.escape
    kpis = ", ".join(_kpi_link(k, anchors) for k in inc["kpis"])
    bands = "<br>".join(_band_html(k, len(inc["kpis"]) > 1) for k in inc["per_kpi"])
    # data-incident: the row's stable id, by which `kpiguard serve` puts its verdict buttons on it
    severe = ' class="severe"' if inc["severity"] >= 2 else ""
    return (f'<tr{severe} data-incident="{e(inc["id"], quote=True)}">'
            f"<td><code>{e(inc['id'])}</code></td><td>{e(_clock(inc['start']))}</td>"
            f'<td class="num">{e(_duration(inc["duration_s"]))}</td><td>{kpis}</td>'
            f'<td class="num">{_fmt(inc["peak_score"])}</td><td class="num">{_fmt(inc["severity"], 2)}</td>'
            f'<td class="band">{bands}</td>{extra}</tr>')


def _muted_html(summary: dict, anchors: dict[str, str]) -> list[str]:
    """The incidents mute rules held back, folded: listed so that a rule muting too much shows."""
    e = html.escape
    muted = summary.get("muted_incidents") or []
    if not muted:
        return []
    out = [f'<details class="muted"><summary>Muted: {len(muted)} incident{"s" if len(muted) != 1 else ""} '
           "matching a mute rule a reviewer confirmed (not alerted)</summary>",
           '<p class="quiet">Each of its KPIs matches an active rule: same KPI and direction, its span within the '
           "rule's time of day (UTC), its severity at most the rule's. <code>kpiguard review mutes</code> lists the "
           "rules, <code>kpiguard review unmute --rule ID</code> lifts one.</p>",
           '<table class="incidents muted"><thead><tr><th>incident</th><th>start (UTC)</th><th>duration</th>'
           "<th>KPIs</th><th>peak score</th><th>severity</th><th>observed vs expected (band)</th><th>muted by</th>"
           "</tr></thead><tbody>"]
    for inc in muted:
        rules = "<br>".join(e(mutes_mod.describe(r)) for r in inc.get("muted_by") or [])
        out.append(_incident_row(inc, anchors, f'<td class="rule">{rules}</td>'))
    out += ["</tbody></table>", "</details>"]
    return out


def _q(quantile: float) -> str:
    return f"{quantile * 100:g}"


def _band_html(k: dict, named: bool) -> str:
    e = html.escape
    who = f"{e(k['kpi_id'])}: " if named else ""
    if k.get("expected") is None and k.get("expected_low") is None and k.get("expected_high") is None:
        return f'{who}{_value(k.get("observed"))} <span class="from">(expected unknown)</span>'
    band = f" ({_value(k.get('expected_low'))} – {_value(k.get('expected_high'))})"
    source = ' <span class="from">day quantiles</span>' if k.get("expected_from") == "day_quantiles" else ""
    return f"{who}{_value(k.get('observed'))} vs {_value(k.get('expected'))}{band}{source}"


def _spans_html(summary: dict, anchors: dict[str, str]) -> list[str]:
    """Every span, folded: the per-KPI runs of flagged points the incidents are made of."""
    e = html.escape
    out = [f'<details class="spans"><summary>The {summary["anomalies"]} anomaly span'
           f'{"s" if summary["anomalies"] != 1 else ""} (runs of flagged points per KPI) the incidents are made '
           "of</summary>",
           '<table class="spans"><thead><tr><th>KPI</th><th>start</th><th>end</th><th>points</th>'
           "<th>peak score</th><th>KPI threshold</th><th>severity</th></tr></thead><tbody>"]
    for s in summary["spans"]:
        row = '<tr class="severe">' if s["severity"] >= 2 else "<tr>"
        out.append(
            f"{row}<td>{_kpi_link(s['kpi_id'], anchors)}</td>"
            f"<td>{e(_time(s['start']))}</td><td>{e(_time(s['end']))}</td>"
            f'<td class="num">{s["points"]}</td><td class="num">{_fmt(s["peak_score"])}</td>'
            f'<td class="num">{_fmt(s["threshold"])}</td><td class="num">{_fmt(s["severity"], 2)}</td></tr>')
    out += ["</tbody></table>", "</details>"]
    return out


def _kpi_link(kpi: str, anchors: dict[str, str]) -> str:
    return f'<a href="#{anchors[kpi]}">{html.escape(kpi)}</a>' if kpi in anchors else html.escape(kpi)


def _banners(summary: dict) -> list[str]:
    """The scorer's checks of the day that failed (the partition's ``alarm_check`` and ``training_range``)."""
    e = html.escape
    out = []
    alarm = summary.get("alarm_check") or {}
    if alarm.get("mismatch"):
        detail = (f" {_percent(alarm.get('alarm_fraction'))} of the day's points flagged against a budget of "
                  f"{_percent(alarm.get('budget_fraction'))}; the check fires above {_ratio(alarm.get('factor'))}× "
                  "the budget.")
        out.append(f'<p class="banner alarm-check"><strong>Alarm rate {_ratio(alarm.get("ratio"))}× the budget: '
                   "likely a model/data mismatch (model trained on other data, or data outside the training "
                   f"range).</strong>{e(detail)}</p>")
    if summary.get("mutes_unavailable"):
        out.append('<p class="banner mutes-unavailable"><strong>Mute rules not applied:</strong> the review store '
                   f"could not be read, so every incident is listed and alerted ({e(summary['mutes_unavailable'])}).</p>")
    trained = summary.get("training_range") or {}
    if trained.get("outside"):
        days = trained.get("days_outside")
        days = len(days) if isinstance(days, (list, tuple)) else days
        far = f" by {_value(days)} day{'s' if days != 1 else ''}" if isinstance(days, (int, float)) else ""
        out.append(f'<p class="banner training-range"><strong>This day is outside the model\'s training range'
                   f"{e(far)}</strong> (trained on {e(_time_or_dash(trained.get('start')))} – "
                   f"{e(_time_or_dash(trained.get('end')))}): its scores compare the day with data it was not "
                   "trained on; retrain on recent data before trusting them.</p>")
    return out


def _not_scored_html(summary: dict) -> list[str]:
    """Rows the scorer held back, by rule, and the KPIs whose sampling interval is not the trained one."""
    e = html.escape
    by_rule, changed = summary.get("quarantined_by_rule") or {}, summary.get("interval_changed") or []
    snapped = summary.get("off_grid_snapped") or 0
    if not (by_rule or changed or snapped):
        return []
    out = ["<h2>Rows not scored as they arrived</h2>"]
    if by_rule:
        out += ['<p class="quiet">Quarantined rows (in the partition\'s quarantine file, each with its reason), '
                "by rule:</p>", '<table class="quarantine"><thead><tr><th>rule</th><th>rows</th></tr></thead><tbody>',
                *(f'<tr><td>{e(str(rule))}</td><td class="num">{int(n)}</td></tr>' for rule, n in by_rule.items()),
                "</tbody></table>"]
    if changed:
        out += ['<p class="quiet">KPIs that arrive at another interval than the model was trained on: scored on '
                "their trained grid; rows between its points are quarantined (<code>on_trained_grid</code>). "
                "Retrain to score them at the new interval.</p>",
                '<table class="interval-changed"><thead><tr><th>KPI</th><th>trained interval (s)</th>'
                "<th>observed interval (s)</th><th>rows quarantined</th></tr></thead><tbody>",
                *(f'<tr><td>{e(str(c.get("kpi_id")))}</td><td class="num">{_seconds(c.get("trained_interval_s"))}</td>'
                  f'<td class="num">{_seconds(c.get("observed_interval_s"))}</td>'
                  f'<td class="num">{int(c.get("rows_quarantined") or 0)}</td></tr>' for c in changed),
                "</tbody></table>"]
    if snapped:
        out.append(f'<p class="quiet">{int(snapped)} rows off their KPI\'s grid were scored at its nearest '
                   "point.</p>")
    return out


def _champion_html(champion: dict) -> list[str]:
    e = html.escape
    if not champion:
        return ["<h2>Champion model</h2>", '<p class="quiet">No champion model recorded.</p>']
    name = e(str(champion.get("model") or "unnamed model"))
    if champion.get("version") is not None:
        name += f" v{e(str(champion['version']))}"
    detector = f" (detector <code>{e(str(champion['detector']))}</code>)" if champion.get("detector") else ""
    url = champion.get("run_url")
    # Only web links: the URL comes from the registry and must not become a javascript: link.
    link = (f' — <a href="{e(url, quote=True)}">MLflow run</a>'
            if isinstance(url, str) and url.startswith(("http://", "https://")) else "")
    out = ["<h2>Champion model</h2>", f"<p>{name}{detector}{link}</p>"]
    metrics = champion.get("metrics") or {}
    if metrics:
        out += ["<table><thead><tr><th>validation metric</th><th>value</th></tr></thead><tbody>",
                *(f'<tr><td>{e(str(k))}</td><td class="num">{e(_fmt(v))}</td></tr>' for k, v in metrics.items()),
                "</tbody></table>"]
    else:
        out.append('<p class="quiet">No validation metrics recorded.</p>')
    return out


def _anchors(kpis) -> dict[str, str]:
    """Unique HTML ids for KPIs (sanitised; a suffix tells apart KPIs that sanitise alike)."""
    out: dict[str, str] = {}
    for kpi in kpis:
        base = "kpi-" + re.sub(r"[^A-Za-z0-9_-]+", "-", kpi).strip("-")
        anchor, n = base, 1
        while anchor in out.values():
            n += 1
            anchor = f"{base}-{n}"
        out[kpi] = anchor
    return out


def _seconds(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _time(iso: str) -> str:
    return pd.Timestamp(iso).strftime("%Y-%m-%d %H:%M:%S")


def _clock(iso: str) -> str:
    """The time of day: an incident of a day's report starts on that day."""
    return pd.Timestamp(iso).strftime("%H:%M")


def _time_or_dash(iso) -> str:
    try:
        return _time(iso) if iso else "–"
    except (TypeError, ValueError):  # the scorer's metadata, shown as written
        return str(iso)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h" + (f" {minutes % 60:02d} min" if minutes % 60 else "")


def _value(v) -> str:
    """A value in a KPI's units: thousands separated, small ones to 3 significant digits."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _percent(v) -> str:
    return f"{v:.2%}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _ratio(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
        return "–"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}"


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
