// Supervisor wallboard (`/`): applies the `/v1/stream` snapshot, `update` and
// `alert` frames to keyed tiles, batched into one animation frame; totals,
// filters, TV mode, the alert panel and the agent detail overlay.

import { AlertPanel } from './alerts.js';
import { serverClock, storedToken } from './api.js';
import { AgentDetail } from './detail.js';
import { clock, DEFAULT_THRESHOLDS, duration, mergeThresholds, yuan } from './format.js';
import { applyI18n, bindLangButton, onLangChange, t } from './i18n.js';
import { askForToken, bindLogout, signIn } from './login.js';
import { StreamClient } from './stream.js';
import { avg15, Tile } from './tiles.js';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);

const state = {
  thresholds: { ...DEFAULT_THRESHOLDS },
  agents: new Map(),
  teams: new Map(),
  shops: new Map(),
  desk: null,
  filter: { team: params.get('team') ?? '', shop: params.get('shop') ?? '' },
};

const tiles = new Map();
const dirty = new Set();
let dirtyAll = false;
let dirtyTotals = false;
let scheduled = false;

/** Counters for tests and for a curious supervisor: frames seen and applied. */
const stats = { frames: 0, applied: 0, lastApplyMs: 0, maxApplyMs: 0, maxTickMs: 0 };
window.__deskpulse = { state, stats, tiles, stream: null };

const grid = $('#agents');
const alerts = new AlertPanel($('#alerts'), {
  onChange: () => {
    dirtyAll = true;
    schedule();
  },
  // The team and shop filters apply to alerts as to tiles.
  shows: (a) => {
    const { team, shop } = state.filter;
    if (shop && a.shop !== shop) return false;
    if (team) return [...state.agents.values()].some((v) => v.agent === a.agent && (v.teams ?? []).includes(team));
    return true;
  },
});
const detail = new AgentDetail($('#detail'), { thresholds: () => state.thresholds });

function setStatus(s) {
  const el = $('#status');
  el.textContent = s;
  el.dataset.state = s;
  $('#status-label').textContent = t(`status.${s}`);
  $('#status-label').dataset.state = s;
  const stale = s === 'stale';
  document.body.dataset.stale = String(stale);
  $('#stale-banner').hidden = !stale;
}

/**
 * Map key of a view. Shop-scoped callers get one agent view per (shop, agent)
 * (`shop` set), so those are keyed by both; everyone else by the agent alone.
 */
function viewKey(v, key) {
  const id = v?.[key];
  if (id == null) return null;
  return key === 'agent' && v.shop != null ? `${id}@${v.shop}` : id;
}

function merge(map, key, views) {
  for (const v of views ?? []) {
    const id = viewKey(v, key);
    if (id == null) continue;
    const prev = map.get(id);
    map.set(id, prev ? { ...prev, ...v } : v);
    if (map === state.agents) dirty.add(id);
  }
}

function onFrame(frame) {
  stats.frames += 1;
  switch (frame.type) {
    case 'snapshot':
      if (frame.thresholds) {
        state.thresholds = mergeThresholds(DEFAULT_THRESHOLDS, frame.thresholds);
        // A detail opened by URL before the first snapshot drew the default norm.
        if (detail.agent) detail.load();
      }
      state.agents.clear();
      state.teams.clear();
      state.shops.clear();
      merge(state.agents, 'agent', frame.agents);
      merge(state.teams, 'team', frame.teams);
      merge(state.shops, 'shop', frame.shops);
      state.desk = frame.desk ?? null;
      alerts.reset(frame.alerts);
      for (const id of tiles.keys()) if (!state.agents.has(id)) dirty.add(id);
      dirtyAll = true;
      dirtyTotals = true;
      break;
    case 'update':
      if (frame.thresholds) state.thresholds = mergeThresholds(state.thresholds, frame.thresholds);
      merge(state.agents, 'agent', frame.agents);
      merge(state.teams, 'team', frame.teams);
      merge(state.shops, 'shop', frame.shops);
      if (frame.desk) state.desk = { ...state.desk, ...frame.desk };
      dirtyTotals = true;
      break;
    case 'alert':
      alerts.apply(frame);
      break;
    default:
      return; // `lagged` is followed by a fresh snapshot; unknown types are ignored
  }
  schedule();
}

function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(flush);
}

function visible(view) {
  const { team, shop } = state.filter;
  if (team && !(view.teams ?? []).includes(team)) return false;
  if (shop && !(view.shop != null ? view.shop === shop : (view.shops ?? []).includes(shop))) return false;
  return true;
}

/** Applies everything marked dirty since the last animation frame. */
function flush() {
  scheduled = false;
  const t0 = performance.now();
  const now = serverClock.now();
  const th = state.thresholds;
  const counts = alerts.countsByAgent();
  const ids = dirtyAll ? new Set([...state.agents.keys(), ...tiles.keys(), ...dirty]) : dirty;
  for (const id of ids) {
    const view = state.agents.get(id);
    let tile = tiles.get(id);
    if (!view) {
      if (tile) {
        tile.el.remove();
        tiles.delete(id);
      }
      continue;
    }
    if (!tile) {
      tile = new Tile(view.agent, view.shop ?? null);
      tiles.set(id, tile);
      grid.append(tile.el);
    }
    tile.render(view, now, th, counts.get(view.agent) ?? 0);
    const show = visible(view);
    if (tile.el.hidden === show) tile.el.hidden = !show;
  }
  dirty.clear();
  dirtyAll = false;
  sortTiles();
  if (dirtyTotals) {
    renderFilters();
    dirtyTotals = false;
  }
  renderTotals(now);
  $('#agents-empty').hidden = tiles.size > 0;
  const ms = performance.now() - t0;
  stats.applied += 1;
  stats.lastApplyMs = ms;
  stats.maxApplyMs = Math.max(stats.maxApplyMs, ms);
}

/** Worst first: longest current wait, then 15m average, then id. Moves only misplaced nodes. */
function sortTiles() {
  const order = [...tiles.values()].sort((a, b) => (b.sortWait - a.sortWait)
    || ((avg15(state.agents.get(b.key)) ?? -1) - (avg15(state.agents.get(a.key)) ?? -1))
    || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  let node = grid.firstElementChild;
  for (const tile of order) {
    if (node !== tile.el) grid.insertBefore(tile.el, node);
    else node = node.nextElementSibling;
  }
}

// ---- totals -------------------------------------------------------------

const totalCards = new Map();

function liveWait(live, now, startKey, msKey, countKey) {
  if (!live || !live[countKey]) return null;
  if (Number.isFinite(live[startKey])) return Math.max(0, now - live[startKey]);
  return live[msKey] ?? null;
}

function deskFromAgents() {
  let waiting = 0;
  let oldestStart = null;
  let sales = 0;
  // The 15m average over the visible agents: exact, from each one's mean
  // and count (sum of samples / number of samples).
  let sum15 = 0;
  let n15 = 0;
  for (const v of state.agents.values()) {
    if (!visible(v)) continue;
    waiting += v.live?.waiting ?? 0;
    const s = v.live?.oldest_wait_start;
    if ((v.live?.waiting ?? 0) > 0 && Number.isFinite(s)) oldestStart = oldestStart == null ? s : Math.min(oldestStart, s);
    sales += v.today?.sales_fen ?? 0;
    const m15 = v['15m'];
    if (m15?.responses > 0 && Number.isFinite(m15.avg_response_ms)) {
      sum15 += m15.avg_response_ms * m15.responses;
      n15 += m15.responses;
    }
  }
  let queued = 0;
  let queuedStart = null;
  for (const s of state.shops.values()) {
    if (state.filter.shop && s.shop !== state.filter.shop) continue;
    queued += s.live?.queued ?? 0;
    const qs = s.live?.oldest_queued_start;
    if ((s.live?.queued ?? 0) > 0 && Number.isFinite(qs)) queuedStart = queuedStart == null ? qs : Math.min(queuedStart, qs);
  }
  return {
    live: { waiting, oldest_wait_start: oldestStart, queued, oldest_queued_start: queuedStart },
    today: { sales_fen: sales },
    '15m': { avg_response_ms: n15 > 0 ? sum15 / n15 : null },
  };
}

function totalCard(key, kind, name) {
  let card = totalCards.get(key);
  if (!card) {
    card = document.createElement('div');
    card.className = 'total';
    card.dataset.kind = kind;
    card.dataset.name = name;
    card.innerHTML = `
      <div class="total-name"><span class="total-kind"></span> <b></b></div>
      <div class="total-row"><span class="k" data-k="waiting"></span><span class="v" data-v="waiting"></span></div>
      <div class="total-row"><span class="k" data-k="oldest_wait"></span><span class="v" data-v="oldest_wait"></span></div>
      <div class="total-row q"><span class="k" data-k="queued"></span><span class="v" data-v="queued"></span></div>
      <div class="total-row q"><span class="k" data-k="oldest_queued"></span><span class="v" data-v="oldest_queued"></span></div>
      <div class="total-row"><span class="k" data-k="avg15"></span><span class="v" data-v="avg15"></span></div>
      <div class="total-row"><span class="k" data-k="sales"></span><span class="v" data-v="sales"></span></div>`;
    card.querySelector('.total-name b').textContent = name;
    totalCards.set(key, card);
  }
  return card;
}

function fillTotal(card, kind, view, now) {
  const live = view.live ?? {};
  const setV = (k, text) => {
    const el = card.querySelector(`[data-v="${k}"]`);
    if (el.textContent !== text) el.textContent = text;
  };
  card.querySelector('.total-kind').textContent = t(`totals.${kind}`);
  for (const el of card.querySelectorAll('[data-k]')) el.textContent = t(`totals.${el.dataset.k}`);
  setV('waiting', String(live.waiting ?? 0));
  setV('oldest_wait', clock(liveWait(live, now, 'oldest_wait_start', 'oldest_wait_ms', 'waiting')));
  const hasQueue = kind !== 'team';
  for (const row of card.querySelectorAll('.total-row.q')) row.hidden = !hasQueue;
  setV('queued', String(live.queued ?? 0));
  setV('oldest_queued', clock(liveWait(live, now, 'oldest_queued_start', 'oldest_queued_ms', 'queued')));
  setV('avg15', duration(view['15m']?.avg_response_ms));
  setV('sales', yuan(view.today?.sales_fen));
  const queuedMs = liveWait(live, now, 'oldest_queued_start', 'oldest_queued_ms', 'queued') ?? 0;
  const waitMs = liveWait(live, now, 'oldest_wait_start', 'oldest_wait_ms', 'waiting') ?? 0;
  const worst = Math.max(queuedMs, waitMs);
  const th = state.thresholds;
  card.dataset.level = worst > th.critical_ms ? 'crit' : worst > th.norm_ms ? 'warn' : 'ok';
}

function renderTotals(now) {
  const root = $('#totals');
  const wanted = [];
  const desk = state.desk ? { ...state.desk } : deskFromAgents();
  wanted.push(['desk:', 'desk', state.desk?.desk ?? '', desk]);
  for (const [name, v] of [...state.teams].sort()) {
    if (!state.filter.team || state.filter.team === name) wanted.push([`team:${name}`, 'team', name, v]);
  }
  for (const [name, v] of [...state.shops].sort()) {
    if (!state.filter.shop || state.filter.shop === name) wanted.push([`shop:${name}`, 'shop', name, v]);
  }
  const keep = new Set(wanted.map((w) => w[0]));
  for (const [key, card] of totalCards) {
    if (!keep.has(key)) {
      card.remove();
      totalCards.delete(key);
    }
  }
  let prev = null;
  for (const [key, kind, name, view] of wanted) {
    const card = totalCard(key, kind, name);
    fillTotal(card, kind, view, now);
    const want = prev ? prev.nextSibling : root.firstChild;
    if (want !== card) root.insertBefore(card, want);
    prev = card;
  }
}

// ---- filters ------------------------------------------------------------

let filterKey = '';

function renderFilters() {
  const teams = new Set(state.teams.keys());
  const shops = new Set(state.shops.keys());
  for (const v of state.agents.values()) {
    for (const x of v.teams ?? []) teams.add(x);
    for (const x of v.shops ?? []) shops.add(x);
  }
  if (state.filter.team) teams.add(state.filter.team);
  if (state.filter.shop) shops.add(state.filter.shop);
  const key = `${[...teams].sort().join(',')}|${[...shops].sort().join(',')}`;
  if (key === filterKey) return;
  filterKey = key;
  fillSelect($('#filter-team'), [...teams].sort(), state.filter.team);
  fillSelect($('#filter-shop'), [...shops].sort(), state.filter.shop);
}

function fillSelect(select, values, selected) {
  select.replaceChildren();
  const all = document.createElement('option');
  all.value = '';
  all.textContent = t('filter.all');
  select.append(all);
  for (const v of values) {
    const o = document.createElement('option');
    o.value = v;
    o.textContent = v;
    select.append(o);
  }
  select.value = selected;
}

function onFilterChange() {
  state.filter.team = $('#filter-team').value;
  state.filter.shop = $('#filter-shop').value;
  const p = new URLSearchParams(location.search);
  for (const k of ['team', 'shop']) {
    if (state.filter[k]) p.set(k, state.filter[k]);
    else p.delete(k);
  }
  const qs = p.toString();
  history.replaceState(null, '', `${location.pathname}${qs ? `?${qs}` : ''}${location.hash}`);
  dirtyAll = true;
  dirtyTotals = true;
  schedule();
  alerts.render();
}

// ---- TV mode --------------------------------------------------------------

function setTv(on) {
  document.body.classList.toggle('tv', on);
  document.body.dataset.tv = String(on);
  $('#tv-toggle').textContent = on ? t('tv.off') : t('tv.on');
  $('#tv-toggle').setAttribute('aria-pressed', String(on));
  const p = new URLSearchParams(location.search);
  if (on) p.set('tv', '1');
  else p.delete('tv');
  const qs = p.toString();
  history.replaceState(null, '', `${location.pathname}${qs ? `?${qs}` : ''}${location.hash}`);
}

function toggleTv() {
  const on = !document.body.classList.contains('tv');
  setTv(on);
  if (on && document.documentElement.requestFullscreen && !document.fullscreenElement) {
    document.documentElement.requestFullscreen().catch(() => { /* not allowed: TV layout still applies */ });
  } else if (!on && document.fullscreenElement) {
    document.exitFullscreen().catch(() => {});
  }
}

// ---- routing ----------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/agent\/(.+)$/);
  if (m) detail.open(decodeURIComponent(m[1]));
  else detail.close();
}

// ---- clock ------------------------------------------------------------------

function tick() {
  const t0 = performance.now();
  const now = serverClock.now();
  const th = state.thresholds;
  for (const tile of tiles.values()) {
    const view = state.agents.get(tile.key);
    if (view && (view.live?.waiting ?? 0) > 0) tile.tick(view, now, th);
  }
  sortTiles();
  renderTotals(now);
  detail.tick();
  const d = new Date(now);
  $('#clock').textContent = [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, '0')).join(':');
  stats.maxTickMs = Math.max(stats.maxTickMs, performance.now() - t0);
}

// ---- start -----------------------------------------------------------------

let stream = null;
let paintMute = () => {};

function startStream() {
  stream = new StreamClient({
    onFrame,
    onState: async (s) => {
      setStatus(s);
      if (s === 'login') {
        const err = { isAuth: true, status: 401, hadToken: Boolean(storedToken()) };
        await askForToken(err);
        startStream();
      }
    },
  });
  window.__deskpulse.stream = stream;
  stream.start();
}

async function main() {
  applyI18n();
  setStatus('connecting');
  bindLangButton($('#lang-toggle'));
  bindLogout($('#logout'));
  paintMute = alerts.bindMute($('#mute-toggle'));
  $('#tv-toggle').addEventListener('click', toggleTv);
  setTv(params.get('tv') === '1');
  $('#filter-team').addEventListener('change', onFilterChange);
  $('#filter-shop').addEventListener('change', onFilterChange);
  renderFilters();
  onLangChange(() => {
    for (const tile of tiles.values()) tile.invalidate();
    filterKey = '';
    renderFilters();
    setStatus($('#status').textContent);
    setTv(document.body.classList.contains('tv'));
    paintMute();
    alerts.relabel();
    dirtyAll = true;
    schedule();
  });
  window.addEventListener('hashchange', route);
  route();
  setInterval(tick, 1000);

  const hadToken = Boolean(storedToken());
  const me = await signIn({
    hadToken,
    onNetworkError: () => setStatus('stale'),
  }).catch(() => null);
  if (me) {
    document.body.dataset.role = me.role ?? '';
    document.body.dataset.open = String(Boolean(me.open));
    $('#logout').hidden = Boolean(me.open);
    $('#whoami').textContent = me.open ? '' : (me.name ?? me.role ?? '');
  }
  if (document.body.dataset.login === 'true') setStatus('login');
  startStream();
}

// Show `login` in #status while the form is up, before the stream exists.
new MutationObserver(() => {
  if (document.body.dataset.login === 'true') setStatus('login');
}).observe(document.body, { attributes: true, attributeFilter: ['data-login'] });

main();
