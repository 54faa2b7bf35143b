// The ward view: one tile per bed, updated from the server's events (edge_agent/clients/ward.py).
// EF in %, times in s on the server's wall clock (the page corrects for its own clock's offset).
"use strict";

const beds = new Map(); // bed → {tile, chart, estimate, status, trend: [[wall, mean, lo, hi, beat], …]}
let alarms = [];
let heartbeatAge = null;
let clockOffset = 0; // server wall − this browser's wall, s
let detailBed = null;
let removeAfterS = null; // alarms.remove_after_s: a bed silent this long may be removed
const TREND_WINDOW_S = 30 * 60; // shown on the tile's chart; the server keeps web.history_s

function band(ef) {
  if (ef >= 50) return ["normal", "normal (≥ 50 %)"];
  if (ef > 40) return ["mild", "mildly reduced (41–49 %)"];
  return ["reduced", "reduced (≤ 40 %)"];
}

function serverNow() { return Date.now() / 1000 + clockOffset; }

function fmtAge(s) { return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`; }

function chartFor(el) {
  // Running mean with its 90 % interval, the beats as points, and the clinical lines at 40 and 50 %.
  const lines = (u) => {
    const ctx = u.ctx;
    for (const [ef, colour] of [[40, "#ef4444"], [50, "#f0b429"]]) {
      const y = u.valToPos(ef, "y", true);
      ctx.save();
      ctx.strokeStyle = colour; ctx.setLineDash([6, 4]); ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
      ctx.restore();
    }
  };
  const opts = {
    width: 400, height: 220,
    scales: { x: { time: true }, y: { range: [10, 90] } },
    axes: [
      { stroke: "#8a949e", grid: { stroke: "#2a3139" } },
      {
        stroke: "#8a949e", grid: { stroke: "#2a3139" }, size: 50,
        splits: () => [20, 30, 40, 50, 60, 70, 80], values: (u, v) => v.map((x) => `${x} %`),
      },
    ],
    legend: { show: false },
    series: [
      {},
      { label: "running EF", stroke: "#4c8bf5", width: 2 },
      { label: "90 % low", stroke: "rgba(76,139,245,0.35)" },
      { label: "90 % high", stroke: "rgba(76,139,245,0.35)" },
      { label: "beat", stroke: "transparent", points: { show: true, size: 4, fill: "#e6e9ec" } },
    ],
    hooks: { draw: [lines] },
  };
  return new uPlot(opts, [[], [], [], [], []], el);
}

function bedView(name) {
  if (beds.has(name)) return beds.get(name);
  document.getElementById("waiting")?.remove();
  const tile = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  tile.id = `bed-${name}`;
  tile.dataset.bed = name;
  tile.querySelector(".bed").textContent = name;
  tile.addEventListener("click", (e) => { if (e.target.tagName !== "BUTTON") openDetail(name); });
  tile.querySelector(".remove").addEventListener("click", () => removeBed(name));
  const main = document.getElementById("beds");
  const after = [...main.children].find((t) => t.dataset.bed > name);
  main.insertBefore(tile, after || null);
  const view = {
    tile, chart: chartFor(tile.querySelector(".trend")), estimate: null, status: null, trend: [], seen: serverNow(),
  };
  beds.set(name, view);
  return view;
}

function drawChart(view) {
  const from = serverNow() - TREND_WINDOW_S;
  const pts = view.trend.filter((p) => p[0] >= from);
  view.chart.setData([0, 1, 2, 3, 4].map((i) => pts.map((p) => p[i])));
}

function drawEstimate(view) {
  const est = view.estimate;
  if (!est) return;
  const t = view.tile, running = est.running;
  const [cls, text] = band(running.mean);
  const ef = t.querySelector(".ef");
  ef.textContent = running.mean.toFixed(0);
  ef.className = `ef ${cls}`;
  t.querySelector(".interval").textContent = est.reliable
    ? `90 % interval ${running.ci90[0].toFixed(0)}–${running.ci90[1].toFixed(0)} %`
    : "interval withheld: low confidence";
  const category = t.querySelector(".category");
  category.textContent = text;
  category.className = `category ${cls}`;
  t.querySelector(".hr").textContent = est.hr_bpm == null ? "HR — bpm" : `HR ${est.hr_bpm.toFixed(0)} bpm`;
  t.querySelector(".beats").textContent =
    `${running.n_beats} beat${running.n_beats === 1 ? "" : "s"} pooled · P(EF<40) ${running.p_ef_lt_40.toFixed(2)}`;
  const rel = t.querySelector(".reliability");
  rel.textContent = est.reliable ? "reliable" : `LOW CONFIDENCE (input unlike the training data, OOD ${est.ood_score.toFixed(1)})`;
  rel.className = `reliability ${est.reliable ? "" : "low"}`;
}

// How a bed's windows are timed (status beat_source): what its heart rate and beats rest on.
const TIMING = {
  ecg: "beats ECG-gated",
  area: "beats image-gated",
  principal: "beats image-gated (weak swing)",
  fixed: "no beats found: fixed windows",
};

function statusLine(st, dropped) {
  const timing = st.beat_source ? ` · ${TIMING[st.beat_source]}` : "";
  return `signal ${st.signal} · ${st.fps.toFixed(1)} fps · ${dropped}${timing}`;
}

function drawStatus(view) {
  const st = view.status;
  if (!st) return;
  const el = view.tile.querySelector(".signal");
  // With the publisher gone the last status is history, not the signal now.
  const gone = alarms.some((a) => a.kind === "publisher_gone");
  const said = statusLine(st, `dropped ${st.windows_dropped} windows`);
  el.textContent = gone ? `last known: ${said}` : said;
  el.className = `signal ${st.signal === "ok" || gone ? "" : "bad"}`;
}

function drawAges() {
  const now = serverNow();
  const gone = alarms.some((a) => a.kind === "publisher_gone");
  for (const view of beds.values()) {
    // A bed the agent stopped publishing alarms "stale" for ever: offer its removal once it is silent.
    const heard = Math.max(view.estimate?.wall ?? 0, view.status?.wall ?? 0, view.seen);
    view.tile.querySelector(".remove").hidden = removeAfterS == null || now - heard < removeAfterS;
    const age = view.tile.querySelector(".age");
    if (!view.estimate) { age.textContent = "waiting for the first estimate"; continue; }
    const s = Math.max(0, now - view.estimate.wall);
    age.textContent = `last estimate ${fmtAge(s)} ago`;
    const old = gone || alarms.some((a) => a.bed === view.tile.dataset.bed && ["stale", "signal"].includes(a.kind));
    age.className = `age ${old ? "late" : ""}`;
    view.tile.querySelector(".ef").classList.toggle("old", old);
  }
  const pub = document.getElementById("publisher");
  if (gone) {
    pub.textContent = `PUBLISHER GONE — no heartbeat for ${heartbeatAge == null ? "?" : heartbeatAge.toFixed(0)} s: the numbers below are the last known`;
    pub.className = "gone";
  } else if (heartbeatAge != null) {
    pub.textContent = `publisher ok · heartbeat ${heartbeatAge.toFixed(1)} s ago`;
    pub.className = "ok";
  }
}

function alarmItem(a) {
  const li = document.createElement("li");
  li.className = `alarm ${a.priority}${a.acknowledged_until != null ? " acknowledged" : ""}`;
  li.dataset.bed = a.bed;
  li.dataset.kind = a.kind;
  const label = document.createElement("span");
  label.textContent = `${a.bed || "agent"}: ${a.message}${a.acknowledged_until != null ? " (acknowledged)" : ""}`;
  li.append(label);
  if (a.acknowledged_until == null) {
    const ack = document.createElement("button");
    ack.type = "button";
    ack.textContent = "Acknowledge";
    ack.addEventListener("click", () => acknowledge(a.bed, a.kind));
    li.append(ack);
  }
  return li;
}

function drawAlarms() {
  document.getElementById("alarm-strip").replaceChildren(...alarms.map(alarmItem));
  for (const [name, view] of beds) {
    const mine = alarms.filter((a) => a.bed === name);
    view.tile.querySelector(".tile-alarms").replaceChildren(...mine.map(alarmItem));
    const sounding = mine.filter((a) => a.acknowledged_until == null);
    view.tile.classList.toggle("alarm-high", sounding.some((a) => a.priority === "high"));
    view.tile.classList.toggle("alarm-medium", sounding.some((a) => a.priority === "medium"));
    drawStatus(view);
  }
  drawAges();
}

async function acknowledge(bed, kind) {
  const r = await fetch("api/ack", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ bed, kind }),
  });
  if (!r.ok) console.warn("acknowledge:", await r.text());
}

async function removeBed(name) {
  if (!window.confirm(`Remove bed ${name}? It has sent nothing for ${removeAfterS} s or more; its alarms are cleared and logged.`)) return;
  const r = await fetch("api/remove", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ bed: name }),
  });
  if (!r.ok) window.alert(`Bed ${name} was not removed: ${await r.text()}`);
}

function onRemoved({ bed }) {
  const view = beds.get(bed);
  if (!view) return;
  view.chart.destroy();
  view.tile.remove();
  beds.delete(bed);
  if (detailBed === bed) { detailBed = null; document.getElementById("detail").hidden = true; }
}

function openDetail(name) {
  detailBed = name;
  document.getElementById("detail").hidden = false;
  drawDetail();
}

function drawDetail() {
  if (detailBed == null || !beds.has(detailBed)) return;
  const view = beds.get(detailBed), est = view.estimate, st = view.status;
  document.getElementById("detail-bed").textContent = `bed ${detailBed}`;
  const body = document.getElementById("detail-body");
  body.replaceChildren();
  if (est) {
    // The estimate carries the beat posterior's quantiles (not its 40 samples): drawn as bars.
    const b = est.beat;
    const p = document.createElement("p");
    p.textContent = `last beat #${est.seq}: ${b.mean.toFixed(1)} % (median ${b.median.toFixed(1)}, 90 % ` +
      `${b.ci90[0].toFixed(1)}–${b.ci90[1].toFixed(1)}, P(EF<40) ${b.p_ef_lt_40.toFixed(2)}` +
      `${b.multimodal ? ", multimodal" : ""}) · latency ${est.latency_ms.toFixed(0)} ms · ${est.backend}`;
    const bars = document.createElement("div");
    bars.className = "quantiles";
    bars.title = "beat posterior: q05, q25, median, q75, q95 (height = EF %)";
    for (const q of [b.q05, b.q25, b.median, b.q75, b.q95]) {
      const bar = document.createElement("div");
      bar.style.height = `${q}%`;
      bar.title = `${q.toFixed(1)} %`;
      bars.append(bar);
    }
    body.append(p, bars);
  }
  if (st) {
    const p = document.createElement("p");
    p.textContent = statusLine(st, `windows dropped ${st.windows_dropped} · frames dropped ${st.frames_dropped}`);
    body.append(p);
  }
  const table = document.createElement("table");
  table.innerHTML = "<tr><th>time</th><th>running EF</th><th>90 %</th><th>beat EF</th></tr>";
  for (const [wall, mean, lo, hi, beat] of view.trend.slice(-20).reverse()) {
    const tr = document.createElement("tr");
    for (const v of [new Date(wall * 1000).toLocaleTimeString(), mean.toFixed(1), `${lo.toFixed(0)}–${hi.toFixed(0)}`, beat.toFixed(1)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    table.append(tr);
  }
  body.append(table);
}

function onEstimate(est) {
  const view = bedView(est.stream);
  view.estimate = est;
  const r = est.running;
  view.trend.push([est.wall, r.mean, r.ci90[0], r.ci90[1], est.beat.mean]);
  drawEstimate(view);
  drawChart(view);
  if (detailBed === est.stream) drawDetail();
}

function onStatus(st) {
  const view = bedView(st.stream);
  view.status = st;
  drawStatus(view);
}

function onAlarms(data) {
  alarms = data.alarms;
  heartbeatAge = data.heartbeat_age_s;
  clockOffset = data.wall - Date.now() / 1000;
  drawAlarms();
}

async function start() {
  const snap = await (await fetch("api/snapshot")).json();
  removeAfterS = snap.alarm_config.remove_after_s;
  onAlarms(snap);
  for (const [name, bed] of Object.entries(snap.beds)) {
    const view = bedView(name);
    view.trend = bed.trend;
    view.estimate = bed.estimate;
    view.status = bed.status;
    drawEstimate(view);
    drawStatus(view);
    drawChart(view);
  }
  drawAlarms();
  const events = new EventSource("events");
  events.addEventListener("estimate", (e) => onEstimate(JSON.parse(e.data)));
  events.addEventListener("status", (e) => onStatus(JSON.parse(e.data)));
  events.addEventListener("alarms", (e) => onAlarms(JSON.parse(e.data)));
  events.addEventListener("removed", (e) => onRemoved(JSON.parse(e.data)));
  events.onerror = () => { document.getElementById("publisher").textContent = "page server unreachable: retrying…"; };
  setInterval(drawAges, 500);
  document.getElementById("detail-close").addEventListener("click", () => {
    detailBed = null;
    document.getElementById("detail").hidden = true;
  });
}

start();
