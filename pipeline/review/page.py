"""The review panel ``kpiguard serve`` adds to a day's static report (:mod:`pipeline.batch.report`).

The report file is served as written; :func:`review_page` inserts a panel after its title (reviewer
name, token, "Day reviewed", the missed-anomaly form) and a script that puts a "Confirm" and a
"False alarm" button, with the current verdict, on each incident row (``tr[data-incident]``). The
script reads the day from the panel and everything else from ``/api/day/<day>``, and builds its
elements with ``textContent``: nothing from the store or the report is ever parsed as HTML.
Reviewer and token are kept in ``sessionStorage`` (gone with the tab), never in a cookie, so the
browser never sends the token on its own.
"""
from __future__ import annotations

import html

TITLE_END, BODY_END = "</h1>", "</body>"

PANEL_CSS = """
#kpiguard-review { border: 1px solid #9bb7d4; background: #f4f8fc; border-radius: 4px; padding: .6em 1em;
                   margin: 1em 0; }
#kpiguard-review h2 { margin-top: .2em; border: 0; }
#kpiguard-review label { margin-right: 1em; white-space: nowrap; }
#kpiguard-review fieldset { margin: .8em 0; border: 1px solid #ccd; }
#kpiguard-review [data-role=status][data-state=error] { color: #a00; font-weight: 600; }
#kpiguard-review [data-role=status][data-state=ok] { color: #060; }
td.review { white-space: nowrap; } td.review button { margin-left: .4em; }
.verdict-confirmed { color: #a00; font-weight: 600; } .verdict-false_alarm { color: #060; font-weight: 600; }
"""

PANEL_SCRIPT = r"""
(() => {
  "use strict";
  const panel = document.getElementById("kpiguard-review");
  const day = panel.dataset.day;
  const field = (name) => panel.querySelector(`[name="${name}"]`);
  const part = (role) => panel.querySelector(`[data-role="${role}"]`);
  const VERDICT_TEXT = {confirmed: "confirmed", false_alarm: "false alarm", partial: "some KPIs reviewed",
                        mixed: "mixed verdicts"};

  for (const name of ["reviewer", "token"]) {  // per tab: a closed tab forgets the token
    const input = field(name);
    input.value = sessionStorage.getItem(`kpiguard.${name}`) || "";
    input.addEventListener("input", () => sessionStorage.setItem(`kpiguard.${name}`, input.value));
  }

  function say(text, failed) {
    const status = part("status");
    status.textContent = text;
    status.dataset.state = failed ? "error" : "ok";
  }

  async function answerOf(response) {
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    return answer;
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST", credentials: "omit",
      headers: {"Content-Type": "application/json", "X-Kpiguard-Token": field("token").value},
      body: JSON.stringify({...body, reviewer: field("reviewer").value}),
    });
    return answerOf(response);
  }

  function element(tag, text, attributes = {}) {
    const made = document.createElement(tag);
    if (text !== undefined) made.textContent = text;
    for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, value);
    return made;
  }

  function reviewCell(row) {
    let cell = row.querySelector("td.review");
    if (!cell) {
      cell = row.appendChild(element("td", undefined, {class: "review"}));
      const header = row.closest("table").querySelector("thead tr");
      if (!header.querySelector("th.review")) header.appendChild(element("th", "verdict", {class: "review"}));
    }
    return cell;
  }

  function showIncident(row, incident) {
    const cell = reviewCell(row);
    cell.replaceChildren();
    if (!incident) {
      cell.append(element("span", "not in the scored partition (rebuild the report)", {class: "from"}));
      return;
    }
    const who = [...new Set(Object.values(incident.verdicts).map((v) => v.reviewer))].join(", ");
    const verdict = incident.verdict ? VERDICT_TEXT[incident.verdict] || incident.verdict : "no verdict";
    cell.append(element("span", verdict + (who ? ` (${who})` : ""),
                        {class: `verdict verdict-${incident.verdict || "none"}`, "data-role": "verdict"}));
    cell.append(element("button", "Confirm", {type: "button", "data-verdict": "confirmed"}));
    cell.append(element("button", "False alarm", {type: "button", "data-verdict": "false_alarm"}));
  }

  function show(review) {
    const byId = new Map(review.incidents.map((incident) => [incident.id, incident]));
    for (const row of document.querySelectorAll("table.incidents tbody tr[data-incident]")) {
      showIncident(row, byId.get(row.dataset.incident));
    }
    part("reviewed").textContent = review.reviewed ? "this day is marked reviewed" : "";
    part("misses").replaceChildren(...review.misses.map((miss) => element(
      "li", `${miss.kpi}: ${miss.start} → ${miss.end} (${miss.reviewer})${miss.note ? ` — ${miss.note}` : ""}`)));
  }

  async function refresh() {
    show(await answerOf(await fetch(`/api/day/${day}`, {credentials: "omit"})));
  }

  async function act(write, done) {
    try {
      const answer = await write();
      await refresh();
      say(done(answer), false);
    } catch (failure) {
      say(failure.message, true);
    }
  }

  document.querySelector("table.incidents")?.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-verdict]");
    if (!button) return;
    const incident = button.closest("tr[data-incident]").dataset.incident;
    act(() => post("/api/verdict", {day, incident, verdict: button.dataset.verdict}),
        (answer) => `saved: ${answer.incident} → ${answer.verdict}`);
  });

  part("done").addEventListener("click", () =>
    act(() => post("/api/done", {day}), (answer) => `saved: ${answer.day} marked reviewed`));

  part("miss").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target, value = (name) => form.elements.namedItem(name).value;
    act(() => post("/api/miss", {kpi: value("kpi"), start: value("start"), end: value("end"),
                                 note: value("note") || null}),
        (answer) => { form.reset(); return `saved: missed anomaly #${answer.miss} on ${answer.kpi}`; });
  });

  refresh().catch((failure) => say(failure.message, true));
})();
"""


def review_page(report_html: str, day: str, nonce: str) -> str:
    """The day's report with the review panel after its title and the panel's script (allowed by the
    page's ``nonce``, :func:`content_security_policy`) before its end."""
    page = _insert_after(report_html, TITLE_END, panel_html(day))
    return _insert_before(page, BODY_END, f'<style>{PANEL_CSS}</style>\n<script nonce="{nonce}">{PANEL_SCRIPT}</script>\n')


def content_security_policy(nonce: str) -> str:
    """Only the report's own inline CSS and data: images, the panel's script, and fetches to this server."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
            "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def panel_html(day: str) -> str:
    e = html.escape
    return f"""
<section id="kpiguard-review" data-day="{e(day, quote=True)}" aria-label="Review">
<h2>Review</h2>
<p class="quiet">Your verdicts become the labels of the next retrain: <em>Confirm</em> an incident that is a
real anomaly, mark a <em>False alarm</em>; report what the detector missed; mark the day reviewed when you
are done (what nobody flagged on it then counts as normal).</p>
<p><label>Reviewer <input name="reviewer" autocomplete="username"></label>
<label>Token <input name="token" type="password" autocomplete="off"></label>
<button type="button" data-role="done">Day reviewed</button> <span data-role="reviewed"></span></p>
<form data-role="miss"><fieldset><legend>Missed anomaly</legend>
<label>KPI <input name="kpi" required></label>
<label>Start (UTC) <input name="start" placeholder="{e(day, quote=True)}T10:00" required></label>
<label>End (UTC) <input name="end" placeholder="{e(day, quote=True)}T10:30" required></label>
<label>Note <input name="note"></label>
<button type="submit">Report missed anomaly</button></fieldset></form>
<ul data-role="misses"></ul>
<p data-role="status" role="status" aria-live="polite"></p>
</section>
"""


def _insert_after(page: str, marker: str, addition: str) -> str:
    at = page.find(marker)
    return page + addition if at < 0 else page[:at + len(marker)] + addition + page[at + len(marker):]


def _insert_before(page: str, marker: str, addition: str) -> str:
    at = page.rfind(marker)
    return page + addition if at < 0 else page[:at] + addition + page[at:]
