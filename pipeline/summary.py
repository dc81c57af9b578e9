"""One line per stage for people: what the stage did and where its output and full report are.

The CLI prints these; ``--json`` prints the stage's result as JSON instead (the same data the stage
writes to its report file). Pure functions of a stage's result, so they are tested exactly.
"""
from __future__ import annotations

ARROW = "→"


def _n(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _splits(parts: dict[str, str]) -> str:
    if list(parts) == ["train"]:
        return parts["train"]
    return "; ".join(f"{split}: {text}" for split, text in parts.items())


def ingest(manifest: dict, out: str) -> str:
    """``manifest``: data/raw/manifest.json (one entry per split)."""
    parts = {split: f"{_n(m['rows'])} rows, {_n(m['kpis'])} KPIs, {_day(m['start'])} – {_day(m['end'])} "
                    f"from {m['spec']}" for split, m in manifest.items()}
    return f"ingest: {_splits(parts)} {ARROW} {out}"


def _day(stamp: str | None) -> str:
    return stamp[:16] if stamp else "–"


def validate(summary: dict, out: str, report_dir: str) -> str:
    """``summary``: reports/validation/summary.json (one entry per split)."""
    parts = {}
    for split, s in summary.items():
        bad_kpis = len(s.get("kpis_quarantined") or [])
        total = s["kpis_valid"] + bad_kpis
        parts[split] = (f"{_n(s['rows_in'])} rows, {_n(s['rows_quarantined'])} quarantined, "
                        f"{s['kpis_valid']}/{total} KPIs ok")
    return f"validate: {_splits(parts)} {ARROW} {out} (report: {report_dir}/data_docs/index.html)"


def windows(summary: dict, out: str) -> str:
    """``summary``: data/windows/summary.json."""
    splits = summary["splits"]
    kpis = max((s["kpis"] for s in splits.values()), default=0)
    rows = " / ".join(f"{split} {_n(s['rows'])}" for split, s in splits.items())
    train_windows = splits.get("train", {}).get("windows", 0)
    return (f"windows: {kpis} KPIs, {rows} points, {_n(train_windows)} train windows of {summary['length']} "
            f"{ARROW} {out}")


def train(report: dict, artifacts: str) -> str:
    """``report``: reports/train/<detector>.json."""
    name, status = report["detector"], report["status"]
    if status != "ok":
        return f"train {name}: {status} ({report.get('reason', 'no reason given')})"
    threads = f", {report['threads']} threads" if report.get("threads") is not None else ""
    return (f"train {name}: ok in {report['train_seconds']:.1f} s, {report['epochs']} epochs, "
            f"{report['device']}{threads} {ARROW} {artifacts}/{name}")


def evaluate(report: dict, evaluation: str) -> str:
    """``report``: reports/evaluation/metrics.json."""
    metric, best = report["champion_metric"], report.get("best_on_val")
    detectors = report["detectors"]
    ok = sum(1 for name, r in detectors.items() if r.get("status") == "ok" and name != "random")
    total = sum(1 for name in detectors if name != "random")
    selection = report.get("selection") or {}
    if selection.get("label_free"):  # no metric decides: the default detector, or nothing to serve
        head = (f"champion {best}, the default detector ({selection['label_free_reason']})" if best else
                f"no champion: the default detector {selection.get('default')} was not scored")
    elif best is None:
        head = f"no detector has a {metric} on validation"
    else:
        res = detectors[best]
        val = res["champion_metric"]["value"]
        test = (res.get("test") or {}).get(metric)
        head = (f"best on validation {best} ({metric} {_f(val)} val"
                + (f", {_f(test)} test" if test is not None else "") + ")")
        if selection.get("best") not in (None, best):
            head = (f"champion {best}, the default ({metric} {_f(val)} val"
                    + (f", {_f(test)} test" if test is not None else "")
                    + f"): {selection['best']} is better on validation but not beyond the noise")
    return f"evaluate: {ok}/{total} detectors scored; {head} {ARROW} {evaluation}/leaderboard.md"


def _f(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def register(report: dict, report_dir: str) -> str:
    """``report``: reports/register/summary.json."""
    serving = report["serving"]
    decisions: dict[str, int] = {}
    for r in report["detectors"].values():
        key = r.get("decision") or r.get("status", "?")
        decisions[key] = decisions.get(key, 0) + 1
    counts = ", ".join(f"{n} {k}" for k, n in sorted(decisions.items()))
    if serving.get("version"):
        head = (f"{serving['model']} v{serving['version']} ({serving.get('detector')}): {serving['decision']}"
                + (f", {serving['reason']}" if serving.get("reason") else ""))
    else:
        head = f"{serving['model']}: {serving['decision']} ({serving.get('reason', '')})"
    return f"register: {head}; detectors: {counts} {ARROW} {report_dir}/summary.json"


def score(result: dict) -> str:
    """``result``: what ``pipeline.batch.score.run`` returns (each partition's _meta.json plus its paths, and
    the anomaly spans and incidents)."""
    parts = result["partitions"]
    model = result["model"]
    which = f"{model.get('model')} v{model['version']}" if model.get("version") else model.get("uri")
    rows = sum(p["rows"] for p in parts)
    anomalies = sum(p["anomalies"] for p in parts)
    quarantined = sum(p["quarantined"] for p in parts)
    where = parts[0]["path"] if len(parts) == 1 else f"{len(parts)} partitions under {_parent(parts[0]['path'])}"
    spans = f" in {_n(result['spans'])} spans" if "spans" in result else ""
    if "incidents" in result:
        spans += f" ({_plural(result['incidents'], 'incident')})"
    return (f"score: {_n(rows)} rows, {_n(anomalies)} anomalies{spans}, {_n(quarantined)} quarantined with {which} "
            f"{ARROW} {where}{_grid(parts)}" + "".join(f"\nscore: warning: {w}" for w in _guards(parts))
            + "".join(f"\nscore: {alert(pushed)}" for pushed in result.get("alerts") or []))


def alert(result: dict) -> str:
    """``result``: what ``pipeline.batch.daily.push_day`` returns (per sink: counts and incident ids)."""
    head = f"alert {result['day']}: {_plural(result['incidents'], 'incident')}"
    if result.get("muted"):
        head += f" ({len(result['muted'])} more muted by a mute rule: not sent)"
    if not result["sinks"]:
        return f"{head}; no sink configured (alerts.alertmanager.url, alerts.webhook.url): nothing sent"
    parts = []
    for name, s in result["sinks"].items():
        counts = ", ".join(f"{s[k]} {k}" for k in ("sent", "updated", "unchanged", "resolved", "busy")
                           if s[k] or k in ("sent", "unchanged"))
        parts.append(f"{name} {s['url']}: {counts}")
    return f"{head} {ARROW} " + "; ".join(parts)


def _days(parts: list[dict]) -> str:
    dates = [p["date"] for p in parts]
    return dates[0] if len(dates) == 1 else f"{len(dates)} days ({dates[0]} – {dates[-1]})"


def _guards(parts: list[dict]) -> list[str]:
    """What pipeline.batch.guards found, one line each (none when every day is ordinary)."""
    lines = []
    outside = [p for p in parts if (p.get("training_range") or {}).get("outside")]
    if outside:
        far = max(outside, key=lambda p: p["training_range"]["days_outside"])
        rng = far["training_range"]
        by = f"{rng['days_outside']:g} days" if len(outside) == 1 else f"up to {rng['days_outside']:g} days ({far['date']})"
        lines.append(f"{_days(outside)} {'is' if len(outside) == 1 else 'are'} {by} outside the model's training "
                     f"range ({rng['start'][:10]} – {rng['end'][:10]}): its scores may mean little")
    mismatch = [p for p in parts if (p.get("alarm_check") or {}).get("mismatch")]
    if mismatch:
        worst = max(mismatch, key=lambda p: p["alarm_check"]["ratio"])
        check = worst["alarm_check"]
        what = (f"{check['alarm_fraction']:.1%} of its points" if len(mismatch) == 1
                else f"up to {check['alarm_fraction']:.1%} of their points ({worst['date']})")
        lines.append(f"{_days(mismatch)} flagged {what}, {check['ratio']:.0f}x the {check['budget_fraction']:.2%} "
                     "evaluate.alarm_budget stands for: the model and this data may not match")
    untrained = sorted({k for p in parts for k in p.get("untrained_kpis") or []})
    if untrained:
        listed = ", ".join(untrained[:10]) + (f" and {len(untrained) - 10} more" if len(untrained) > 10 else "")
        lines.append(f"{len(untrained)} KPI(s) without training statistics scored (score.allow_untrained_kpis): {listed}")
    return lines


def report(summary: dict) -> str:
    """``summary``: what ``pipeline.batch.daily.build_day_report`` returns (the report's JSON plus its paths)."""
    flagged = f"{summary['anomalous_kpis']} of {summary['kpis_scored']} KPIs flagged"
    notes = []
    alarm = summary.get("alarm_check") or {}
    if alarm.get("mismatch"):
        ratio = alarm.get("ratio")
        times = f"{ratio:.0f}" if isinstance(ratio, (int, float)) and ratio >= 10 else _f1(ratio)
        notes.append(f"alarm rate {times}× the budget: likely a model/data mismatch")
    if (summary.get("training_range") or {}).get("outside"):
        notes.append("the day is outside the model's training range")
    if summary.get("muted_incidents"):
        notes.append(f"{len(summary['muted_incidents'])} more muted by mute rules (listed apart, not alerted)")
    if summary.get("mutes_unavailable"):
        notes.append("mute rules not applied: the review store could not be read")
    return (f"report {summary['day']}: {_plural(summary['incident_count'], 'incident')}, {flagged} "
            f"({_plural(summary['anomalies'], 'anomaly span')}) {ARROW} {summary['html']} "
            f"(json: {summary['json']})" + "".join(f"; {n}" for n in notes))


def _plural(count: int, noun: str) -> str:
    return f"{_n(count)} {noun}{'' if count == 1 else 's'}"


def _f1(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _grid(parts: list[dict]) -> str:
    """What the trained grid did to the rows (pipeline.data.prep.place_on_grid); empty when nothing."""
    off = sum((p.get("quarantined_by_rule") or {}).get("on_trained_grid", 0) for p in parts)
    snapped = sum(p.get("off_grid_snapped", 0) for p in parts)
    changed = {c["kpi_id"]: c for p in parts for c in p.get("interval_changed") or []}
    notes = [f"{_n(off)} of the quarantined not on their KPI's trained grid (on_trained_grid)"] if off else []
    if changed:
        notes.append("interval changed: " + ", ".join(
            f"{k} (trained {c['trained_interval_s']:g} s, arrives {c['observed_interval_s']:g} s)"
            for k, c in sorted(changed.items())))
    if snapped:
        notes.append(f"{_n(snapped)} rows off the grid scored at its nearest point")
    return "".join(f"; {n}" for n in notes)


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0]


def bench(report: dict, out: str, metric: str | None = None) -> str:
    """``report``: <out>/results.json; ``metric``: the headline (NAB's score on NAB, else aiops_f1)."""
    metric = metric or ("nab_standard" if report["protocol"] == "nab" else "aiops_f1")
    rows = {n: r for n, r in report["summary"].items() if n != "random"}
    ok = {n: r for n, r in rows.items() if r.get("status") == "ok"}
    ranked = sorted(((r.get(metric), n) for n, r in ok.items() if r.get(metric) is not None), reverse=True)
    best = f"best test {metric}: {ranked[0][1]} {_f(ranked[0][0])}" if ranked else f"no {metric}"
    data = report["data"]
    return (f"bench: {len(ok)}/{len(rows)} detectors ok on {data['kpis']} KPIs ({report['protocol']}) in "
            f"{report['wall_s']} s; {best} {ARROW} {out}/results.md")


def _mutes(result: dict) -> str:
    """``kpiguard review mutes``: each suggestion with its ready command, then the rules."""
    from pipeline.data import review_mutes as mutes  # pandas: not for `kpiguard --help`
    lines = [f"mute suggestions: {len(result['suggestions'])} (false alarms dismissed on 2 days or more, same KPI "
             f"and direction, time of day ±{result['tolerance']} overlapping)"]
    for s in result["suggestions"]:
        lines += [f"  {s['kpi_id']} {s['direction']} {s['from']}–{s['to']} UTC, severity ≤ {s['max_severity']:g}: "
                  f"{len(s['verdicts'])} dismissals on {', '.join(s['days'])}", f"    {s['command']}"]
    lines.append(f"mute rules: {len(result['rules'])}")
    for r in result["rules"]:
        lifted = f", lifted {r['disabled_at'][:16]} by {r['disabled_by']}" if r.get("disabled_at") else ""
        note = f" — {r['note']}" if r.get("note") else ""
        lines.append(f"  {mutes.describe(r)}{note}{lifted}")
    return "\n".join(lines)


def review(action: str, result: dict) -> str:
    """``result``: what the ``pipeline.review.service`` function behind ``kpiguard review ACTION`` returns."""
    if action == "list":
        lines = [f"review {result['day']}: {_plural(len(result['incidents']), 'incident')}"
                 + (", day marked reviewed" if result["reviewed"] else "")
                 + (f", {len(result['misses'])} reported miss(es)" if result["misses"] else "")]
        for inc in result["incidents"]:
            muted = f"  muted by rule {', '.join(f'#{r}' for r in inc['muted_by'])}" if inc.get("muted_by") else ""
            lines.append(f"  {inc['id']}  {inc['start']} → {inc['end']}  severity {_f1(inc['severity'])}  "
                         f"{', '.join(inc['kpis'][:3])}{' …' if len(inc['kpis']) > 3 else ''}  "
                         f"verdict: {inc['verdict'] or '-'}{muted}")
        return "\n".join(lines)
    if action == "mutes":
        return _mutes(result)
    from pipeline.data import review_mutes as mutes

    if action == "mute":
        return f"review: mute rule {mutes.describe(result)} confirmed; `kpiguard review unmute --rule {result['id']}` lifts it"
    if action == "unmute":
        return f"review: mute rule {mutes.describe(result)} lifted by {result['disabled_by']}"
    if action == "verdict":
        return f"review: {result['incident']} {ARROW} {result['verdict']} on {', '.join(result['kpis'])}"
    if action == "miss":
        return f"review: missed anomaly #{result['miss']} on {result['kpi']} {result['start']} → {result['end']}"
    if action == "done":
        return f"review: {result['day']} marked reviewed"
    by = ", ".join(f"{v} {k}" for k, v in result["by_origin"].items()) or "no reviews yet"
    return f"labels: {_plural(result['spans'], 'span')} ({by}), digest {result['digest']} {ARROW} {result['path']}"
