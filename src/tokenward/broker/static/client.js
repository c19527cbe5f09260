// tokenward broker client: streaming-avatar sessions from the browser, as an ES module.
//
//   import { SessionClient } from "https://broker.example.com/v1/client.js";
//   const avatar = new SessionClient({ broker: "https://broker.example.com", key, credential: "avatar" });
//   await avatar.start();                     // a fresh session token, every time
//   await avatar.task("Hello!");              // POST /v1/streaming.task through the broker
//   await avatar.stop();
//
// The page never holds the provider's API key: the broker mints a one-session token for each
// start and forwards the session's calls (session-bound proxy) with that session's own
// credentials. When the provider refuses the token (410 session_expired) or the broker no
// longer knows the session (404, 410), the client starts a fresh session and sends the call
// again there; it never reuses a token. The session is kept alive while the page is open and
// stopped when the page goes away. `key` is a broker client key restricted to this page's
// origin, its credential, a small max_sessions and a low rate (see docs/broker.md).
// Events (a CustomEvent's `detail`): "started" {sessionId, fingerprint, upstream},
// "expired" {sessionId}, "stopped" {sessionId}, "error" {status, error, reason}.

/** An error answer of the broker: {status, error, reason} (never a secret). */
export class BrokerError extends Error {
  constructor(status, body) {
    super(`${status} ${body && body.error ? body.error + ": " + body.reason : ""}`.trim());
    this.status = status;
    this.error = body && body.error;
    this.reason = body && body.reason;
  }
}

/** Answers after which the session is over: a fresh one is started for the next call. */
const OVER = new Set([401, 404, 410]);

export class SessionClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.broker  the broker's URL (default: this page's origin)
   * @param {string} options.key  a broker client key (twk_...) limited to this page
   * @param {string} options.credential  the session-scoped credential, e.g. "avatar"
   * @param {number} [options.keepAliveMs=30000]  keepalive period (0: none)
   * @param {string} [options.taskPath="/v1/streaming.task"]  the provider's task call
   */
  constructor({ broker = location.origin, key, credential, keepAliveMs = 30000,
                taskPath = "/v1/streaming.task" }) {
    super();
    this.broker = broker.replace(/\/+$/, "");
    this.credential = credential;
    this.taskPath = taskPath;
    this.keepAliveMs = keepAliveMs;
    this.session = null; // {session_id, token, fingerprint, upstream_session_id, upstream, proxy, ...}
    this._key = key;
    this._timer = null;
    this._onHide = () => this._stopOnUnload();
    addEventListener("pagehide", this._onHide);
  }

  /** Start a new session (a fresh token); an open one is stopped first. */
  async start() {
    if (this.session) await this.stop();
    const body = await this._fetch("POST", "/v1/sessions", { credential: this.credential });
    this.session = body;
    if (this.keepAliveMs > 0) {
      this._timer = setInterval(() => this._keepAlive(), this.keepAliveMs);
    }
    this._emit("started", { sessionId: body.session_id, fingerprint: body.fingerprint,
                            upstream: body.upstream_session_id });
    return body;
  }

  /** Send a task in the session (started if needed); returns the provider's `data`. */
  async task(text, extra = {}) {
    const answer = await this.call(this.taskPath, { text, ...extra });
    return answer && answer.data;
  }

  /**
   * POST `path` (the provider's path, e.g. "/v1/streaming.interrupt") in this session. The
   * broker fills in the upstream session id. Over (expired, unknown): one fresh session, once.
   */
  async call(path, body = {}) {
    if (!this.session) await this.start();
    try {
      return await this._fetch("POST", this.session.proxy + path, body);
    } catch (err) {
      if (!(err instanceof BrokerError) || !OVER.has(err.status)) throw err;
      this._emit("expired", { sessionId: this.session && this.session.session_id });
      this._forget();
      await this.start(); // a fresh token: nothing of the old session is reused
      return await this._fetch("POST", this.session.proxy + path, body);
    }
  }

  /** Stop the session upstream and forget its token. */
  async stop() {
    const session = this.session;
    if (!session) return;
    this._forget();
    try {
      await this._fetch("DELETE", "/v1/sessions/" + encodeURIComponent(session.session_id));
    } catch (err) {
      // 404/410: already over. A 502 (stop pending) is retried by the broker itself.
      if (!(err instanceof BrokerError) || !OVER.has(err.status)) this._error(err);
    }
    this._emit("stopped", { sessionId: session.session_id });
  }

  /** Stop listening for the page going away (after a last stop()). */
  close() {
    removeEventListener("pagehide", this._onHide);
  }

  // -- internals ---------------------------------------------------------------------------
  _forget() {
    clearInterval(this._timer);
    this._timer = null;
    this.session = null;
  }

  async _keepAlive() {
    const session = this.session;
    if (!session) return;
    try {
      await this._fetch("POST", `/v1/sessions/${encodeURIComponent(session.session_id)}/keepalive`);
    } catch (err) {
      if (err instanceof BrokerError && OVER.has(err.status) && this.session === session) {
        this._emit("expired", { sessionId: session.session_id });
        this._forget(); // the next call starts a fresh session
      } else {
        this._error(err);
      }
    }
  }

  _stopOnUnload() {
    const session = this.session;
    if (!session) return;
    this._forget();
    // keepalive: the request outlives the page (sendBeacon cannot send Authorization).
    fetch(this.broker + "/v1/sessions/" + encodeURIComponent(session.session_id), {
      method: "DELETE", headers: this._headers(false), keepalive: true, credentials: "omit",
    }).catch(() => {});
  }

  _headers(json) {
    const headers = { Authorization: "Bearer " + this._key };
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  async _fetch(method, path, body) {
    const answer = await fetch(this.broker + path, {
      method,
      headers: this._headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    const text = await answer.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { reason: text }; }
    if (!answer.ok) throw new BrokerError(answer.status, data);
    return data;
  }

  _error(err) {
    this._emit("error", { status: err.status, error: err.error, reason: err.reason || String(err) });
  }

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
