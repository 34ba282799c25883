// HTTP side of the browser: the stored token, authenticated fetches, whoami,
// and the live clock offset against the server's `now`.

const TOKEN_KEY = 'deskpulse.token';
const COOKIE = 'deskpulse_token';

/** An HTTP answer that was not 2xx; `status` 0 means the server could not be reached. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  /** True for 401/403: the token is missing, wrong, or not allowed here. */
  get isAuth() {
    return this.status === 401 || this.status === 403;
  }
}

/** The token saved by the login form, or null. */
export function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** Saves the token in localStorage and in the cookie the same-origin WebSocket carries. */
export function saveToken(token) {
  try { localStorage.setItem(TOKEN_KEY, token); } catch { /* the cookie still carries it */ }
  document.cookie = `${COOKIE}=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
}

/** Forgets the token in both places. */
export function clearToken() {
  try { localStorage.removeItem(TOKEN_KEY); } catch { /* nothing to clear */ }
  document.cookie = `${COOKIE}=; path=/; SameSite=Strict; Max-Age=0`;
}

// A token in localStorage but not in the cookie (cookie expired or cleared):
// put it back so the WebSocket carries it too.
{
  const t = storedToken();
  if (t && !document.cookie.split('; ').some((c) => c.startsWith(`${COOKIE}=`))) saveToken(t);
}

/** Fetches JSON with the stored token; throws ApiError on non-2xx or network failure. */
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  const token = storedToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, String(err));
  }
  const text = await res.text();
  if (!res.ok) {
    let message = text;
    try { message = JSON.parse(text).error ?? text; } catch { /* plain text error */ }
    throw new ApiError(res.status, message);
  }
  return text ? JSON.parse(text) : null;
}

/** `GET /v1/whoami`: `{role, name, agent, teams, shops, open}`. */
export function whoami() {
  return api('/v1/whoami');
}

/** The WebSocket URL of the live stream on this origin. */
export function streamUrl(params = '') {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/v1/stream${params}`;
}

/**
 * Server clock as seen from the browser, so waits count up between frames.
 * Each frame gives a sample `server now - local receive time`; a frame that
 * was delayed (busy tab, slow link) gives a smaller one, so the estimate is
 * the largest sample of the last 30 s.
 */
export const serverClock = {
  offset: 0,
  samples: [],
  /** Records a server `now` (ms) just received. */
  sync(now) {
    if (!Number.isFinite(now)) return;
    const local = Date.now();
    this.samples.push([local, now - local]);
    while (this.samples.length > 1 && this.samples[0][0] < local - 30000) this.samples.shift();
    if (this.samples.length > 120) this.samples.shift();
    this.offset = Math.max(...this.samples.map((s) => s[1]));
  },
  /** Forgets the samples (a new connection may reach a restarted server). */
  reset() {
    this.samples = [];
  },
  /** The server's current time estimated locally. */
  now() {
    return Date.now() + this.offset;
  },
};
