// Agent detail (`#/agent/<id>` on the wallboard): today's response-time
// histogram, the last hour per minute (uPlot), open waits and the day's alerts.
// Also reused by the agent page for the waits list and the minute chart.

import uPlot from './vendor/uPlot.esm.js';
import { api, ApiError, serverClock } from './api.js';
import { clock, duration, timeOfDay } from './format.js';
import { t } from './i18n.js';

/** Renders `histogram` ([{from_ms,to_ms,count}]) as HTML bars into `root`. */
export function renderHistogram(root, histogram) {
  root.replaceChildren();
  const buckets = Array.isArray(histogram) ? histogram : [];
  const max = buckets.reduce((m, b) => Math.max(m, b.count ?? 0), 0);
  if (buckets.length === 0 || max === 0) {
    root.textContent = '–';
    return;
  }
  for (const b of buckets) {
    const bar = document.createElement('div');
    bar.className = 'hist-bar';
    bar.dataset.count = String(b.count);
    bar.title = `${duration(b.from_ms)}–${duration(b.to_ms)}: ${b.count}`;
    const fill = document.createElement('span');
    fill.className = 'hist-fill';
    fill.style.height = `${Math.max(b.count > 0 ? 2 : 0, (b.count / max) * 100)}%`;
    const label = document.createElement('span');
    label.className = 'hist-label';
    label.textContent = duration(b.from_ms);
    const n = document.createElement('span');
    n.className = 'hist-n';
    n.textContent = b.count > 0 ? String(b.count) : '';
    bar.append(n, fill, label);
    root.append(bar);
  }
}

/** A uPlot line of per-minute averages (seconds) in `root`; returns the chart (or null). */
export function renderMinutes(root, minutes, normMs, previous) {
  previous?.destroy();
  root.replaceChildren();
  const rows = Array.isArray(minutes) ? minutes : [];
  const xs = rows.map((m) => Math.floor(m.minute_start / 1000));
  const ys = rows.map((m) => (m.avg_response_ms == null ? null : m.avg_response_ms / 1000));
  const ns = rows.map((m) => m.responses ?? 0);
  const width = Math.max(280, Math.min(root.clientWidth || 560, 900));
  // axis text follows the page colours (dark in TV mode)
  const style = getComputedStyle(document.body);
  const axis = {
    stroke: style.color,
    font: `${Math.round(parseFloat(style.fontSize) * 0.8)}px ${style.fontFamily}`,
    grid: { stroke: 'rgba(128,128,128,0.2)', width: 1 },
    ticks: { stroke: 'rgba(128,128,128,0.3)', width: 1 },
  };
  return new uPlot({
    width,
    height: 200,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max ?? 0, (normMs / 1000) * 1.2)] } },
    axes: [
      { ...axis, values: (u, splits) => splits.map((v) => timeOfDay(v * 1000).slice(0, 5)) },
      { ...axis, label: 's', size: 50 },
    ],
    series: [
      {},
      { label: t('detail.minutes'), stroke: '#2563eb', width: 2, spanGaps: false, points: { show: true, size: 5 } },
      { label: t('detail.count'), stroke: 'rgba(120,120,120,0.5)', width: 1, scale: 'n', show: false },
    ],
    legend: { show: false },
    hooks: {
      draw: [(u) => {
        const y = u.valToPos(normMs / 1000, 'y', true);
        const { ctx } = u;
        ctx.save();
        ctx.strokeStyle = '#d97706';
        ctx.setLineDash([6, 4]);
        ctx.beginPath();
        ctx.moveTo(u.bbox.left, y);
        ctx.lineTo(u.bbox.left + u.bbox.width, y);
        ctx.stroke();
        ctx.restore();
      }],
    },
  }, [xs, ys, ns], root);
}

/** Fills a table body with open waits; their clocks tick via `tickWaits`. */
export function renderWaits(tbody, waits) {
  tbody.replaceChildren();
  for (const w of waits ?? []) {
    const tr = document.createElement('tr');
    tr.className = 'wait-row';
    tr.dataset.since = String(w.since);
    for (const v of [w.shop, w.customer, w.conversation]) {
      const td = document.createElement('td');
      td.textContent = v ?? '';
      tr.append(td);
    }
    const td = document.createElement('td');
    td.className = 'wait-since';
    tr.append(td);
    tbody.append(tr);
  }
  tickWaits(tbody);
}

/** Recomputes every wait clock in `tbody` from the server clock. */
export function tickWaits(tbody) {
  const now = serverClock.now();
  for (const tr of tbody.querySelectorAll('tr.wait-row')) {
    const text = clock(now - Number(tr.dataset.since));
    const td = tr.querySelector('.wait-since');
    if (td.textContent !== text) td.textContent = text;
  }
}

/** The overlay on the wallboard; `open(id)` loads and shows, `close()` hides. */
export class AgentDetail {
  constructor(root, { thresholds }) {
    this.root = root;
    this.thresholds = thresholds;
    this.agent = null;
    this.chart = null;
    this.timer = null;
    root.querySelector('.detail-close').addEventListener('click', () => {
      location.hash = '';
    });
  }

  async open(agent) {
    this.agent = agent;
    this.root.hidden = false;
    this.root.dataset.agent = agent;
    this.root.dataset.loaded = 'false';
    this.root.querySelector('.detail-agent').textContent = agent;
    clearInterval(this.timer);
    await this.load();
    this.timer = setInterval(() => {
      if (this.agent) this.load();
    }, 10000);
  }

  close() {
    this.agent = null;
    this.root.hidden = true;
    delete this.root.dataset.agent;
    clearInterval(this.timer);
    this.chart?.destroy();
    this.chart = null;
  }

  async load() {
    const agent = this.agent;
    const msg = this.root.querySelector('.detail-message');
    try {
      const id = encodeURIComponent(agent);
      const [detail, alerts] = await Promise.all([
        api(`/v1/agents/${id}/detail`),
        api(`/v1/alerts?state=all&agent=${id}`),
      ]);
      if (agent !== this.agent) return;
      msg.textContent = '';
      const th = this.thresholds();
      renderHistogram(this.root.querySelector('.detail-histogram'), detail.histogram);
      this.chart = renderMinutes(this.root.querySelector('.detail-minutes'), detail.minutes, th.norm_ms, this.chart);
      renderWaits(this.root.querySelector('.detail-waits tbody'), detail.waits);
      this.root.querySelector('.detail-no-waits').hidden = (detail.waits ?? []).length > 0;
      this.renderAlerts(alerts.alerts ?? []);
      this.root.dataset.loaded = 'true';
    } catch (err) {
      if (agent !== this.agent) return;
      msg.textContent = t('detail.load_failed', { code: err instanceof ApiError ? err.status : '?' });
      this.root.dataset.loaded = 'error';
    }
  }

  renderAlerts(alerts) {
    const ul = this.root.querySelector('.detail-alerts');
    ul.replaceChildren();
    for (const a of alerts) {
      const li = document.createElement('li');
      li.className = 'detail-alert';
      li.dataset.severity = a.severity;
      li.dataset.alertId = String(a.id);
      const parts = [
        timeOfDay(a.raised_at),
        t(`severity.${a.severity}`),
        t(`rule.${a.rule}`),
        a.shop ?? '',
        duration(a.value_ms),
      ];
      if (a.resolved_at != null) parts.push(`${t('alerts.resolved')} ${timeOfDay(a.resolved_at)}`);
      if (a.acked_by) parts.push(t('alerts.acked_by', { who: a.acked_by }));
      li.textContent = parts.join(' · ');
      ul.append(li);
    }
    this.root.querySelector('.detail-no-alerts').hidden = alerts.length > 0;
  }

  tick() {
    if (this.agent) tickWaits(this.root.querySelector('.detail-waits tbody'));
  }
}
