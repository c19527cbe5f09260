// tokenward broker example: start and stop streaming-avatar sessions from the browser.
// No build step, no dependencies. Tokens stay in memory (handed to the provider's SDK in a
// real frontend); the page shows only their fingerprint and length and logs nothing.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const sessions = new Map(); // session id -> {token, fingerprint, upstream}

  // The key and broker may come in the URL fragment (never sent to a server); drop it from
  // the address bar and history at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("key")) $("key").value = fragment.get("key");
  if (fragment.has("broker")) $("broker").value = fragment.get("broker");
  if (fragment.has("credential")) $("credential").value = fragment.get("credential");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);

  function status(text, error = false) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  async function call(method, path, body) {
    const base = $("broker").value.trim().replace(/\/+$/, "");
    const headers = {"Authorization": "Bearer " + $("key").value.trim()};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const answer = await fetch(base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    const text = await answer.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = {reason: text}; }
    return {status: answer.status, data};
  }

  function describe(status, data) {
    return status + " " + (data && data.error ? data.error + ": " + data.reason : "");
  }

  function render() {
    const body = $("sessions");
    body.replaceChildren();
    if (sessions.size === 0) {
      const row = body.insertRow();
      row.className = "empty";
      const cell = row.insertCell();
      cell.colSpan = 5;
      cell.textContent = "no session";
    }
    for (const [id, s] of sessions) {
      const row = body.insertRow();
      row.dataset.sessionId = id;
      row.dataset.fingerprint = s.fingerprint;
      for (const text of [id, s.fingerprint, String(s.token.length), s.upstream || "-"]) {
        const code = document.createElement("code");
        code.textContent = text;
        row.insertCell().append(code);
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "stop";
      button.textContent = "Stop";
      button.onclick = () => stop(id);
      row.insertCell().append(button);
    }
    $("stop-all").disabled = sessions.size === 0;
  }

  async function start() {
    $("start").disabled = true;
    try {
      const {status: code, data} = await call("POST", "/v1/sessions", {credential: $("credential").value.trim()});
      if (code !== 201) { status("start failed: " + describe(code, data), true); return; }
      // A fresh token for every session: hand data.token (and data.upstream) to the SDK here.
      sessions.set(data.session_id, {
        token: data.token, fingerprint: data.fingerprint, upstream: data.upstream_session_id,
      });
      status("started " + data.session_id);
      render();
    } catch (err) {
      status("start failed: the broker could not be reached (" + err.name + ")", true);
    } finally {
      $("start").disabled = false;
    }
  }

  async function stop(id) {
    try {
      const {status: code, data} = await call("DELETE", "/v1/sessions/" + encodeURIComponent(id));
      if (code !== 204 && code !== 404) { status("stop failed: " + describe(code, data), true); return; }
      sessions.delete(id); // forget the token with the session
      status("stopped " + id);
      render();
    } catch (err) {
      status("stop failed: the broker could not be reached (" + err.name + ")", true);
    }
  }

  $("start").onclick = start;
  $("stop-all").onclick = async () => { for (const id of [...sessions.keys()]) await stop(id); };
  window.addEventListener("pagehide", () => {
    // Best effort: end the sessions when the page goes away (idle ones are reaped anyway).
    for (const id of sessions.keys()) call("DELETE", "/v1/sessions/" + encodeURIComponent(id)).catch(() => {});
  });
  // Keep open sessions from being reaped as idle, as a streaming frontend does.
  setInterval(() => {
    for (const id of sessions.keys()) {
      call("POST", "/v1/sessions/" + encodeURIComponent(id) + "/keepalive").catch(() => {});
    }
  }, 30000);
  render();
})();
