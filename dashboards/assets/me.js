// Agent page (`/me`): the signed-in agent's own numbers, waits and standing
// in the team, kept live by the agent-scoped `/v1/stream`. Nothing about
// other agents is requested or shown.

import { api, ApiError, serverClock, storedToken } from './api.js';
import { renderHistogram, renderMinutes, renderWaits, tickWaits } from './detail.js';
import { count, DEFAULT_THRESHOLDS, duration, mergeThresholds, percent, yuan } from './format.js';
import { applyI18n, bindLangButton, onLangChange, t } from './i18n.js';
import { askForToken, bindLogout, signIn } from './login.js';
import { StreamClient } from './stream.js';
import { Tile } from './tiles.js';

const $ = (sel) => document.querySelector(sel);

const FIELDS = [
  ['responses', 'me.responses', count],
  ['avg_response_ms', 'me.avg', duration],
  ['p90_ms', 'me.p90', duration],
  ['avg_first_response_ms', 'me.first', duration],
  ['slow_responses', 'me.slow', count],
  ['customers', 'me.customers', count],
  ['reply_rate', 'me.reply_rate', percent],
  ['orders', 'me.orders', count],
  ['sales_fen', 'me.sales', yuan],
  ['conversion_rate', 'me.conversion', percent],
];

const state = {
  agent: null,
  thresholds: { ...DEFAULT_THRESHOLDS },
  view: null,
  windows: { today: null, '15m': null },
  standing: null,
  waiting: null,
};
window.__deskpulse = { state };

let tile = null;
let chart = null;

function setStatus(s) {
  $('#status').textContent = s;
  $('#status').dataset.state = s;
  $('#status-label').textContent = t(`status.${s}`);
  document.body.dataset.stale = String(s === 'stale');
  $('#stale-banner').hidden = s !== 'stale';
}

function renderWindow(el, metrics) {
  if (!el.firstChild) {
    for (const [k, label] of FIELDS) {
      const div = document.createElement('div');
      div.innerHTML = `<dt data-i18n="${label}"></dt><dd data-f="${k}">–</dd>`;
      el.append(div);
    }
    applyI18n(el);
  }
  for (const [k, , fmt] of FIELDS) {
    const text = fmt(metrics?.[k] ?? null);
    const dd = el.querySelector(`[data-f="${k}"]`);
    if (dd.textContent !== text) dd.textContent = text;
  }
}

function renderStanding() {
  const s = state.standing;
  const text = $('#standing-text');
  const fill = $('#standing-gauge .gauge-fill');
  if (!s || s.percentile == null) {
    text.textContent = t('me.no_standing');
    fill.style.width = '0%';
    $('#standing-gauge').dataset.percentile = '';
    return;
  }
  const p = Math.round(s.percentile);
  text.textContent = t('me.standing_text', { p, n: s.team_size ?? '–' });
  fill.style.width = `${Math.max(0, Math.min(100, s.percentile))}%`;
  $('#standing-gauge').dataset.percentile = String(p);
}

function renderAll() {
  const view = state.view ?? {
    agent: state.agent,
    live: state.windows.today ?? {},
    today: state.windows.today ?? {},
    '15m': state.windows['15m'] ?? {},
  };
  tile.render(view, serverClock.now(), state.thresholds, 0);
  renderWindow($('#me-today'), view.today ?? state.windows.today);
  renderWindow($('#me-15m'), view['15m'] ?? state.windows['15m']);
  renderStanding();
}

async function loadStats() {
  const id = encodeURIComponent(state.agent);
  const [today, m15] = await Promise.all([
    api(`/v1/agents/${id}/stats?window=today`),
    api(`/v1/agents/${id}/stats?window=15m`),
  ]);
  if (Number.isFinite(today?.now)) serverClock.sync(today.now);
  state.windows.today = today;
  state.windows['15m'] = m15;
  if (!state.view) renderAll();
}

async function loadStanding() {
  try {
    state.standing = await api(`/v1/agents/${encodeURIComponent(state.agent)}/standing?window=today`);
  } catch (err) {
    state.standing = null;
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
  }
  renderStanding();
}

async function loadDetail() {
  const d = await api(`/v1/agents/${encodeURIComponent(state.agent)}/detail`);
  renderWaits($('#me-waits tbody'), d.waits);
  $('#me-no-waits').hidden = (d.waits ?? []).length > 0;
  renderHistogram($('#me-histogram'), d.histogram);
  chart = renderMinutes($('#me-minutes'), d.minutes, state.thresholds.norm_ms, chart);
  $('#me').dataset.loaded = 'true';
}

function refresh() {
  return Promise.all([loadStats(), loadStanding(), loadDetail()]).catch((err) => {
    if (err instanceof ApiError && err.status !== 0) {
      $('#me-message').hidden = false;
      $('#me-message').textContent = t('detail.load_failed', { code: err.status });
    }
  });
}

function onFrame(frame) {
  if (frame.type === 'snapshot' && frame.thresholds) {
    state.thresholds = mergeThresholds(DEFAULT_THRESHOLDS, frame.thresholds);
  }
  if (frame.type !== 'snapshot' && frame.type !== 'update') return;
  // The stream is scoped to this agent by the server; ignore anything else defensively.
  const mine = (frame.agents ?? []).find((a) => a.agent === state.agent);
  if (!mine) return;
  state.view = state.view && frame.type === 'update' ? { ...state.view, ...mine } : mine;
  const waiting = mine.live?.waiting ?? 0;
  const start = mine.live?.oldest_wait_start ?? null;
  const key = `${waiting}|${start}`;
  if (key !== state.waiting) {
    state.waiting = key;
    loadDetail().catch(() => {});
  }
  requestAnimationFrame(renderAll);
}

function startStream() {
  const stream = new StreamClient({
    onFrame,
    onState: async (s) => {
      setStatus(s);
      if (s === 'live') refresh();
      if (s === 'login') {
        await askForToken({ isAuth: true, status: 401, hadToken: Boolean(storedToken()) });
        startStream();
      }
    },
  });
  stream.start();
}

async function main() {
  applyI18n();
  setStatus('connecting');
  bindLangButton($('#lang-toggle'));
  bindLogout($('#logout'));
  onLangChange(() => {
    setStatus($('#status').textContent);
    tile?.invalidate();
    for (const el of [$('#me-today'), $('#me-15m')]) applyI18n(el);
    if (tile) renderAll();
  });
  new MutationObserver(() => {
    if (document.body.dataset.login === 'true') setStatus('login');
  }).observe(document.body, { attributes: true, attributeFilter: ['data-login'] });

  const me = await signIn({ hadToken: Boolean(storedToken()), onNetworkError: () => setStatus('stale') });
  $('#logout').hidden = Boolean(me.open);
  $('#whoami').textContent = me.name ?? '';
  const asked = new URLSearchParams(location.search).get('agent');
  state.agent = me.agent ?? (me.role !== 'agent' ? asked : null);
  if (!state.agent) {
    setStatus('live');
    $('#me-message').hidden = false;
    $('#me-message').textContent = t('me.not_agent');
    return;
  }
  $('#me').dataset.agent = state.agent;
  tile = new Tile(state.agent);
  tile.el.querySelector('.agent-name').removeAttribute('href');
  $('#me-tile').append(tile.el);
  renderAll();
  refresh();
  startStream();
  setInterval(() => {
    if (document.body.dataset.stale !== 'true') {
      loadStats().catch(() => {});
      loadStanding().catch(() => {});
    }
  }, 15000);
  setInterval(() => {
    const now = serverClock.now();
    if (state.view) tile.tick(state.view, now, state.thresholds);
    tickWaits($('#me-waits tbody'));
    const d = new Date(now);
    $('#clock').textContent = [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, '0')).join(':');
  }, 1000);
}

main();
