// The `/v1/stream` WebSocket with reconnect and backoff. Frames go to
// `onFrame`; the connection state (connecting | live | stale | login) goes to
// `onState`. A socket that closes is retried with capped exponential backoff;
// when whoami then answers 401/403 the state becomes `login` and retries stop.

import { ApiError, serverClock, streamUrl, whoami } from './api.js';

const BACKOFF_MS = [250, 500, 1000, 2000, 3000, 5000];

/** Close codes a server may use to refuse a subscriber's credentials. */
const AUTH_CLOSE_CODES = new Set([1008, 4001, 4003, 4401, 4403]);

/** One live stream; call `start()` once and `stop()` to end it for good. */
export class StreamClient {
  constructor({ onFrame, onState, params = '' }) {
    this.onFrame = onFrame;
    this.onState = onState;
    this.params = params;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.state = null;
    /** Largest JSON.parse time (ms) and frame size (chars) seen, for the perf smoke test. */
    this.maxParseMs = 0;
    this.maxFrameBytes = 0;
  }

  start() {
    this.stopped = false;
    this.setState(this.state === 'stale' ? 'stale' : 'connecting');
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
      this.ws = null;
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState(state);
  }

  connect() {
    if (this.stopped) return;
    let gotFrame = false;
    let ws;
    try {
      ws = new WebSocket(streamUrl(this.params));
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      let frame;
      const t0 = performance.now();
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.maxParseMs = Math.max(this.maxParseMs, performance.now() - t0);
      this.maxFrameBytes = Math.max(this.maxFrameBytes, ev.data.length);
      if (frame.type === 'snapshot') serverClock.reset();
      if (Number.isFinite(frame.now)) serverClock.sync(frame.now);
      if (frame.type === 'snapshot') {
        gotFrame = true;
        this.attempt = 0;
        this.setState('live');
      }
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (!gotFrame || AUTH_CLOSE_CODES.has(ev.code)) {
        this.checkAuthThenRetry();
      } else {
        this.setState('stale');
        this.retry();
      }
    };
    ws.onerror = () => { /* onclose follows and decides */ };
  }

  /** A socket that never delivered a snapshot may have been refused: ask whoami why. */
  async checkAuthThenRetry() {
    try {
      const me = await whoami();
      if (me?.role === 'ingest') {
        // A valid token that may only send events: the stream will always
        // refuse it, so ask for another instead of retrying forever.
        this.stopped = true;
        this.setState('login');
        return;
      }
    } catch (err) {
      if (err instanceof ApiError && err.isAuth) {
        this.stopped = true;
        this.setState('login');
        return;
      }
    }
    if (this.stopped) return;
    this.setState('stale');
    this.retry();
  }

  retry() {
    if (this.stopped) return;
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    const jitter = Math.random() * base * 0.2;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), base + jitter);
  }
}
