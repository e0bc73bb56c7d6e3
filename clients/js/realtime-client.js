// realtime-client.js — the browser side of realtime-edge's unified stream
// (`/v2/realtime/stream`, CONTRACT section 10.1). Zero dependencies, one ES
// module; served by the sidecar at `GET /v2/realtime/client.js`.
//
// What it does, per organisation and browser profile:
// * ONE WebSocket for all tabs. Tabs elect a leader with the Web Locks API
//   (`realtime-leader-<orgId>`). The other tabs queue a request for the same
//   lock, so the browser grants it to one of them the moment the leader's lock
//   is released (tab closed, crashed, stopped, or put into the back/forward
//   cache) — no heartbeats, no timers. The leader passes every server message
//   to the other tabs over the BroadcastChannel `realtime-<orgId>`. Where
//   either API is missing, each tab connects by itself.
// * Every tab dispatches the window events the V1 provider dispatched:
//   `<service>-stream-events` (detail.events, de-duplicated by eventId),
//   `<service>-stream-health` (detail.healthy, detail.lastEventAt) and
//   `<service>-stream-resync` when a reconnect could not be resumed.
// * Reconnects with exponential backoff and full jitter, resuming with
//   `lastSeq`; close 4001 → a fresh token from getToken; 1008 → stop and
//   dispatch `realtime-error`; everything else → reconnect.
//
// The same module also gives `uploadDocument` (resumable uploads, version 2
// of `/v2/documents/upload/stream`, CONTRACT section 7) and `joinRoom` (chat
// rooms on `/v2/collaboration/chat/stream`, CONTRACT section 8).
//
// The pure parts (EventIdCache, backoffDelay, closeAction, StreamDispatcher)
// are exported so they can be tested without a browser (`npm test`).

/** Limits of the client, named so they are easy to find and to test. */
export const LIMITS = Object.freeze({
  /** eventIds remembered per org for de-duplication. */
  dedupIdsPerOrg: 1000,
  /** orgs whose eventIds are remembered at once (least recently used go). */
  dedupOrgs: 3,
  /** first reconnect delay bound, in ms (full jitter: 0..bound). */
  backoffBaseMs: 500,
  /** largest reconnect delay bound, in ms. */
  backoffCapMs: 30000,
});

/** Close codes of the stream protocol (CONTRACT section 2). */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY: 1008,
  INTERNAL: 1011,
  TRY_AGAIN_LATER: 1013,
  TOKEN_EXPIRED: 4001,
});

/** The lock name that elects an org's leader tab. */
export const lockName = (orgId) => `realtime-leader-${orgId}`;
/** The BroadcastChannel name an org's leader fans out on. */
export const channelName = (orgId) => `realtime-${orgId}`;

/**
 * Remembers recently seen eventIds: per org a least-recently-used set of at
 * most `idsPerOrg` ids, for at most `maxOrgs` orgs (the least recently used
 * org is forgotten first). Memory is bounded whatever the server sends.
 */
export class EventIdCache {
  constructor({ idsPerOrg = LIMITS.dedupIdsPerOrg, maxOrgs = LIMITS.dedupOrgs } = {}) {
    if (!(idsPerOrg >= 1) || !(maxOrgs >= 1)) {
      throw new RangeError("EventIdCache bounds must be at least 1");
    }
    this.idsPerOrg = idsPerOrg;
    this.maxOrgs = maxOrgs;
    /** @type {Map<string, Set<string>>} insertion order = recency */
    this.orgs = new Map();
  }

  /** True when `eventId` was seen for `orgId` before; records it otherwise. */
  seen(orgId, eventId) {
    const key = String(orgId);
    let ids = this.orgs.get(key);
    if (ids) {
      this.orgs.delete(key);
    } else {
      ids = new Set();
    }
    this.orgs.set(key, ids);
    while (this.orgs.size > this.maxOrgs) {
      this.orgs.delete(this.orgs.keys().next().value);
    }
    const id = String(eventId);
    if (ids.has(id)) {
      // Refresh its recency: a duplicate is the strongest sign it is still live.
      ids.delete(id);
      ids.add(id);
      return true;
    }
    ids.add(id);
    while (ids.size > this.idsPerOrg) {
      ids.delete(ids.values().next().value);
    }
    return false;
  }

  /** How many ids are remembered for `orgId`. */
  size(orgId) {
    return this.orgs.get(String(orgId))?.size ?? 0;
  }

  /** The orgs remembered, least recently used first. */
  orgIds() {
    return [...this.orgs.keys()];
  }
}

/**
 * Exponential backoff with full jitter: a uniformly random delay in
 * [0, min(cap, base * 2^attempt)) ms. `attempt` counts failures since the
 * last successful handshake, from 0.
 */
export function backoffDelay(
  attempt,
  { baseMs = LIMITS.backoffBaseMs, capMs = LIMITS.backoffCapMs } = {},
  random = Math.random,
) {
  const n = Number.isFinite(attempt) && attempt > 0 ? Math.floor(attempt) : 0;
  // 2 ** 1100 is Infinity, which Math.min turns into the cap: no overflow.
  const bound = Math.min(capMs, baseMs * 2 ** n);
  return Math.floor(random() * bound);
}

/**
 * What to do when the stream closes with `code`:
 * - "stop": the server refused us on policy (handshake, auth) — retrying
 *   would only repeat it, so stop and tell the application;
 * - "refresh": the token expired — reconnect with a fresh one;
 * - "reconnect": anything else (shutdown 1001, overload/slow 1013, network
 *   loss 1006, internal 1011, …) — reconnect after a jittered backoff.
 */
export function closeAction(code) {
  if (code === CLOSE.POLICY) return "stop";
  if (code === CLOSE.TOKEN_EXPIRED) return "refresh";
  return "reconnect";
}

/** The handshake the client sends first (CONTRACT section 2). */
export function buildHandshake({ services, filters, lastSeq }) {
  const hs = { services: [...services], version: 1 };
  if (filters && typeof filters === "object" && Object.keys(filters).length > 0) {
    hs.filters = filters;
  }
  if (typeof lastSeq === "number" && Number.isFinite(lastSeq)) hs.lastSeq = lastSeq;
  return hs;
}

/**
 * `url` with the token in the `access_token` query parameter (browsers
 * cannot set headers on a WebSocket). http(s) URLs are turned into ws(s);
 * a relative URL is resolved against `base` (the page's location).
 */
export function streamUrl(url, token, base) {
  const u = base ? new URL(url, base) : new URL(url);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  u.searchParams.set("access_token", token);
  return u.toString();
}

/**
 * Turns server messages into the V1 provider's window events, for one org.
 * Both the leader (messages from its socket) and followers (the same
 * messages from the BroadcastChannel) feed it, so every tab dispatches the
 * same events, each de-duplicated against that tab's own EventIdCache.
 */
export class StreamDispatcher {
  /**
   * @param {object} o
   * @param {string|number} o.orgId
   * @param {string[]} o.services  the services this tab listens to (for
   *   health and resync events that are not about one service)
   * @param {EventIdCache} o.dedup
   * @param {(name: string, detail: object) => void} o.emit
   * @param {() => number} [o.now]
   */
  constructor({ orgId, services, dedup, emit, now = () => Date.now() }) {
    this.orgId = orgId;
    this.services = [...services];
    this.dedup = dedup;
    this.emit = emit;
    this.now = now;
    /** The last stream position seen (null before the first ack). */
    this.lastSeq = null;
    /** When the last event arrived, per service (ms since the epoch). */
    this.lastEventAt = new Map();
  }

  /**
   * Handles one parsed server message. `resumeRequested` says whether the
   * handshake of the connection it came from carried a lastSeq (only then
   * does `ack.resumed: false` mean events may have been missed).
   */
  handle(msg, { resumeRequested = false } = {}) {
    if (!msg || typeof msg !== "object") return;
    const seq = typeof msg.seq === "number" && Number.isFinite(msg.seq) ? msg.seq : null;
    switch (msg.type) {
      case "ack": {
        // A new connection's position: adopted as is, since a stream that was
        // not resumed (a new sidecar run) starts from an unrelated base.
        if (seq !== null) this.lastSeq = seq;
        for (const s of this.services) this.health(s, true);
        if (resumeRequested && msg.resumed === false) {
          for (const s of this.services) this.emit(`${s}-stream-resync`, { orgId: this.orgId });
        }
        break;
      }
      case "event": {
        if (seq !== null) this.lastSeq = this.lastSeq === null ? seq : Math.max(this.lastSeq, seq);
        if (typeof msg.service !== "string" || !Array.isArray(msg.events)) return;
        const fresh = msg.events.filter(
          (e) => !(e && e.eventId !== undefined && this.dedup.seen(this.orgId, e.eventId)),
        );
        this.lastEventAt.set(msg.service, this.now());
        if (fresh.length > 0) this.emit(`${msg.service}-stream-events`, { events: fresh });
        this.health(msg.service, true);
        break;
      }
      case "error": {
        if (typeof msg.service === "string") {
          this.health(msg.service, false, { code: msg.code, message: msg.message });
        }
        break;
      }
      default:
        // ping and anything newer: nothing to dispatch.
        break;
    }
  }

  /** The stream is down (socket closed): every service is unhealthy. */
  disconnected() {
    for (const s of this.services) this.health(s, false);
  }

  health(service, healthy, error) {
    const detail = { healthy, lastEventAt: this.lastEventAt.get(service) ?? null };
    if (error) detail.error = error;
    this.emit(`${service}-stream-health`, detail);
  }
}

/** One EventIdCache per page, shared by every client in it (as in V1). */
export const sharedEventIds = new EventIdCache();

/** What the client uses from its host; a browser page by default. */
function browserEnvironment() {
  const g = globalThis;
  return {
    WebSocket: g.WebSocket,
    locks: g.navigator?.locks,
    BroadcastChannel: g.BroadcastChannel,
    target: g.window ?? g,
    setTimeout: (f, ms) => g.setTimeout(f, ms),
    clearTimeout: (t) => g.clearTimeout(t),
    random: Math.random,
    now: () => Date.now(),
    baseUrl: g.location?.href,
  };
}

/**
 * The unified stream of one org for this page: leader election across tabs,
 * the WebSocket (on the leader), fan-out, reconnects, window events.
 */
export class RealtimeClient {
  /**
   * @param {object} options see realtime-client.d.ts
   */
  constructor(options) {
    const o = options ?? {};
    if (typeof o.url !== "string" || o.url === "") throw new TypeError("url is required");
    if (o.orgId === undefined || o.orgId === null || String(o.orgId) === "") {
      throw new TypeError("orgId is required");
    }
    if (typeof o.getToken !== "function") throw new TypeError("getToken must be a function");
    if (!Array.isArray(o.services) || o.services.length === 0) {
      throw new TypeError("services must be a non-empty array of service names");
    }
    this.url = o.url;
    this.orgId = o.orgId;
    this.getToken = o.getToken;
    this.services = [...o.services];
    this.filters = o.filters;
    this.backoff = {
      baseMs: o.backoff?.baseMs ?? LIMITS.backoffBaseMs,
      capMs: o.backoff?.capMs ?? LIMITS.backoffCapMs,
    };
    this.env = { ...browserEnvironment(), ...(o.environment ?? {}) };
    const target = this.env.target;
    this.dispatcher = new StreamDispatcher({
      orgId: this.orgId,
      services: this.services,
      dedup: o.eventIds ?? sharedEventIds,
      emit: (name, detail) => target.dispatchEvent(new CustomEvent(name, { detail })),
      now: this.env.now,
    });
    /** "idle" | "following" | "connecting" | "open" | "reconnecting" | "suspended" | "stopped" */
    this.state = "idle";
    this.isLeader = false;
    this.running = false;
    this.socket = null;
    this.channel = null;
    this.attempt = 0;
    this.generation = 0;
    this.retryTimer = null;
    this.releaseLock = null;
    this.lockAbort = null;
    /** Set when the server refused this leader (1008): { code, reason }. */
    this.refusal = null;
    this.onPageHide = () => this.suspend();
    this.onPageShow = (e) => {
      if (e.persisted) this.resume();
    };
  }

  /** The last stream position this tab has seen (sent as lastSeq on reconnect). */
  get lastSeq() {
    return this.dispatcher.lastSeq;
  }

  /** True when this page elects a leader across tabs (Web Locks + BroadcastChannel). */
  get shared() {
    return Boolean(this.env.locks && this.env.BroadcastChannel);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.env.target.addEventListener?.("pagehide", this.onPageHide);
    this.env.target.addEventListener?.("pageshow", this.onPageShow);
    this.join();
  }

  stop() {
    if (!this.running) return;
    this.running = false;
    this.refusal = null;
    this.env.target.removeEventListener?.("pagehide", this.onPageHide);
    this.env.target.removeEventListener?.("pageshow", this.onPageShow);
    this.leave();
    this.state = "stopped";
  }

  // ---- tab membership ------------------------------------------------------

  /** Joins the org's tabs: listen to the channel and queue for the lock. */
  join() {
    if (!this.shared) {
      this.lead();
      return;
    }
    this.channel = new this.env.BroadcastChannel(channelName(this.orgId));
    this.channel.onmessage = (e) => this.onChannelMessage(e.data);
    this.state = "following";
    // A leader that was refused answers this with the refusal, so a tab
    // opened later does not try again either.
    this.broadcast({ kind: "hello" });
    const abort = new AbortController();
    this.lockAbort = abort;
    // Without ifAvailable the request waits in the browser's queue and is
    // granted as soon as the current holder releases: that is the takeover.
    this.env.locks
      .request(lockName(this.orgId), { mode: "exclusive", signal: abort.signal }, () => {
        if (!this.running || abort.signal.aborted) return undefined;
        return new Promise((release) => {
          this.releaseLock = release;
          this.lead();
        });
      })
      .catch(() => {
        // AbortError after leave(): nothing to do.
      });
  }

  /** Leaves: close the socket, release or withdraw the lock, close the channel. */
  leave() {
    this.generation += 1;
    this.isLeader = false;
    if (this.retryTimer !== null) {
      this.env.clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    const ws = this.socket;
    this.socket = null;
    if (ws) {
      try {
        ws.close(CLOSE.NORMAL, "leaving");
      } catch {
        // already closing
      }
    }
    this.lockAbort?.abort();
    this.lockAbort = null;
    this.releaseLock?.();
    this.releaseLock = null;
    this.channel?.close();
    this.channel = null;
  }

  /** pagehide: give up the lock and socket so the page can enter the bfcache. */
  suspend() {
    if (!this.running) return;
    if (this.refusal) {
      // Refused: there is nothing to resume; let the next page try afresh.
      this.stop();
      return;
    }
    this.leave();
    this.state = "suspended";
  }

  /** pageshow from the bfcache: rejoin. */
  resume() {
    if (!this.running || this.state !== "suspended") return;
    this.join();
  }

  onChannelMessage(m) {
    if (!m || typeof m !== "object") return;
    if (m.kind === "message") {
      this.dispatcher.handle(m.msg, { resumeRequested: Boolean(m.resumeRequested) });
    } else if (m.kind === "down") {
      this.dispatcher.disconnected();
    } else if (m.kind === "fatal") {
      if (!this.refusal) this.fail(m.code, m.reason, false);
    } else if (m.kind === "hello" && this.refusal) {
      this.broadcast({ kind: "fatal", ...this.refusal });
    }
  }

  broadcast(m) {
    try {
      this.channel?.postMessage(m);
    } catch {
      // channel closed under us (pagehide): the followers rejoin anyway.
    }
  }

  // ---- the leader's socket -------------------------------------------------

  lead() {
    this.isLeader = true;
    this.attempt = 0;
    this.connect();
  }

  async connect() {
    const gen = ++this.generation;
    this.retryTimer = null;
    this.state = this.attempt === 0 ? "connecting" : "reconnecting";
    let token;
    try {
      token = await this.getToken();
    } catch {
      if (gen === this.generation) this.retry(this.attempt++);
      return;
    }
    if (gen !== this.generation || !this.isLeader) return;
    let ws;
    try {
      ws = new this.env.WebSocket(streamUrl(this.url, String(token), this.env.baseUrl));
    } catch (e) {
      // A malformed URL will not get better by retrying.
      this.fail(0, `cannot open the stream: ${e?.message ?? e}`, true);
      return;
    }
    this.socket = ws;
    const resumeFrom = this.dispatcher.lastSeq;
    const resumeRequested = resumeFrom !== null;
    let acked = false;
    ws.onopen = () => {
      ws.send(
        JSON.stringify(
          buildHandshake({ services: this.services, filters: this.filters, lastSeq: resumeFrom }),
        ),
      );
    };
    ws.onmessage = (e) => {
      if (this.socket !== ws || typeof e.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (!msg || typeof msg !== "object") return;
      if (msg.type === "ack") {
        acked = true;
        this.attempt = 0;
        this.state = "open";
      }
      this.dispatcher.handle(msg, { resumeRequested });
      this.broadcast({ kind: "message", msg, resumeRequested });
    };
    ws.onerror = () => {
      // A close event always follows; it decides.
    };
    ws.onclose = (e) => {
      if (this.socket !== ws) return;
      this.socket = null;
      this.dispatcher.disconnected();
      this.broadcast({ kind: "down" });
      const action = closeAction(e.code);
      if (action === "stop") {
        this.fail(e.code, e.reason, true);
      } else if (action === "refresh" && acked) {
        // The token ran out on a stream that worked: reconnect at once,
        // connect() asks getToken for a fresh one.
        this.retryAfter(0);
      } else {
        this.retry(this.attempt++);
      }
    };
  }

  retry(attempt) {
    this.retryAfter(backoffDelay(attempt, this.backoff, this.env.random));
  }

  retryAfter(ms) {
    if (!this.running || !this.isLeader) return;
    this.state = "reconnecting";
    const gen = this.generation;
    this.retryTimer = this.env.setTimeout(() => {
      if (gen === this.generation) this.connect();
    }, ms);
  }

  /**
   * The server refused this client on policy: stop trying, here and in
   * every tab of the org (they would be refused alike), and dispatch
   * `realtime-error`. A refused leader keeps the lock (and answers newly
   * opened tabs with the refusal) until the application calls stop() or the
   * page goes away: released at once, a waiting tab could win the lock before
   * the refusal reaches it over the channel, and try again.
   */
  fail(code, reason, fromLeader) {
    if (fromLeader) {
      this.refusal = { code, reason };
      this.broadcast({ kind: "fatal", code, reason });
      this.generation += 1;
      if (this.retryTimer !== null) {
        this.env.clearTimeout(this.retryTimer);
        this.retryTimer = null;
      }
      this.socket = null;
      this.isLeader = false;
      this.state = "stopped";
      if (!this.shared) this.stop();
    } else {
      this.stop();
    }
    this.env.target.dispatchEvent(
      new CustomEvent("realtime-error", { detail: { orgId: this.orgId, code, reason } }),
    );
  }
}

// ---- uploads (CONTRACT section 7, version 2) --------------------------------

/** Limits of uploadDocument; each can be overridden per call. */
export const UPLOAD_LIMITS = Object.freeze({
  /** largest binary frame, in bytes (the protocol allows at most 1 MiB). */
  frameBytes: 1048576,
  /** bytes sent but not yet acknowledged (the sidecar's uploads.window_bytes default). */
  windowBytes: 4194304,
  /** reconnects in a row without the upload getting further before giving up. */
  maxReconnects: 8,
});

/** The default endpoints, resolved against the page's location. */
export const UPLOAD_PATH = "/v2/documents/upload/stream";
export const CHAT_PATH = "/v2/collaboration/chat/stream";

/**
 * A refusal from the sidecar: `code` is the protocol's error code
 * (FILE_TOO_LARGE, SEND_FAILED, …) or one of the client's own
 * (DISCONNECTED, REFUSED, TIMEOUT, QUEUE_FULL, LEFT, NOT_CONNECTED).
 */
export class RealtimeError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "RealtimeError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/** An AbortError as browsers raise it (DOMException where it exists). */
function abortError(message) {
  if (typeof DOMException === "function") return new DOMException(message, "AbortError");
  const e = new Error(message);
  e.name = "AbortError";
  return e;
}

/** The host APIs the upload and chat sockets use; a browser page by default. */
function socketEnvironment(overrides) {
  const g = globalThis;
  return {
    WebSocket: g.WebSocket,
    setTimeout: (f, ms) => g.setTimeout(f, ms),
    clearTimeout: (t) => g.clearTimeout(t),
    random: Math.random,
    now: () => Date.now(),
    baseUrl: g.location?.href,
    ...(overrides ?? {}),
  };
}

/** The token from `getToken` (called on every connect) or a fixed `token`. */
async function tokenFrom(o) {
  if (typeof o.getToken === "function") return String(await o.getToken());
  if (typeof o.token === "string") return o.token;
  throw new TypeError("getToken (a function) or token (a string) is required");
}

/** Parses a text frame into an object; anything else is null. */
function parseMessage(data) {
  if (typeof data !== "string") return null;
  try {
    const m = JSON.parse(data);
    return m && typeof m === "object" && !Array.isArray(m) ? m : null;
  } catch {
    return null;
  }
}

/** The version-2 handshake for `file` (CONTRACT section 7). */
export function buildUploadHandshake(file, meta, uploadId) {
  const m = meta ?? {};
  const hs = {
    filename: m.filename ?? file.name,
    filesize: file.size,
    mimetype: m.mimetype ?? file.type ?? "",
    version: 2,
  };
  for (const k of ["documentType", "guestId", "propertyId"]) {
    if (m[k] !== undefined && m[k] !== null) hs[k] = m[k];
  }
  if (uploadId) hs.uploadId = uploadId;
  return hs;
}

/**
 * Streams `file` (a Blob or File) to the sidecar with upload version 2 and
 * resolves with the backend's result. Binary frames of at most `frameBytes`,
 * never more than `windowBytes` unacknowledged; a dropped connection is
 * reconnected with backoff and resumed at the offset the sidecar holds, so
 * at most one window is sent twice. An `error` message rejects with a
 * RealtimeError carrying the sidecar's code; aborting `signal` closes the
 * socket and rejects with an AbortError, leaving the partial file on the
 * sidecar for a later call with the same `uploadId`.
 *
 * @param {Blob} file
 * @param {object} meta  documentType, guestId, propertyId (filename and mimetype default to the file's)
 * @param {object} [options] see realtime-client.d.ts
 */
export function uploadDocument(file, meta, options = {}) {
  const o = options ?? {};
  if (!file || typeof file.size !== "number" || typeof file.slice !== "function") {
    return Promise.reject(new TypeError("file must be a Blob or File"));
  }
  const env = socketEnvironment(o.environment);
  const url = o.url ?? UPLOAD_PATH;
  const frameBytes = Math.min(o.frameBytes ?? UPLOAD_LIMITS.frameBytes, UPLOAD_LIMITS.frameBytes);
  const windowBytes = o.windowBytes ?? UPLOAD_LIMITS.windowBytes;
  const maxReconnects = o.maxReconnects ?? UPLOAD_LIMITS.maxReconnects;
  const backoff = {
    baseMs: o.backoff?.baseMs ?? LIMITS.backoffBaseMs,
    capMs: o.backoff?.capMs ?? LIMITS.backoffCapMs,
  };
  if (!(frameBytes >= 1) || !(windowBytes >= frameBytes)) {
    return Promise.reject(new RangeError("need 1 <= frameBytes <= windowBytes"));
  }
  const total = file.size;
  const signal = o.signal;

  return new Promise((resolve, reject) => {
    let uploadId = o.uploadId ?? null;
    let socket = null;
    let timer = null;
    let done = false;
    /** Failed connects in a row since the upload last got further. */
    let failures = 0;
    /** Bytes the sidecar has acknowledged, and bytes sent on this socket. */
    let acked = 0;
    let sent = 0;
    let pumping = false;

    const finish = (err, result) => {
      if (done) return;
      done = true;
      signal?.removeEventListener("abort", onAbort);
      if (timer !== null) env.clearTimeout(timer);
      const ws = socket;
      socket = null;
      if (ws) {
        try {
          ws.close(CLOSE.NORMAL, err ? "upload stopped" : "done");
        } catch {
          // already closing
        }
      }
      if (err) reject(err);
      else resolve(result);
    };
    const onAbort = () => {
      const e = abortError("upload aborted");
      // The partial file stays on the sidecar: the caller can resume with it.
      e.uploadId = uploadId;
      finish(e);
    };
    if (signal?.aborted) {
      onAbort();
      return;
    }
    signal?.addEventListener("abort", onAbort);

    const progress = () => {
      try {
        o.onProgress?.({ loaded: acked, total, uploadId });
      } catch {
        // the application's callback must not break the upload
      }
    };

    /** Sends frames while the window has room; one loop at a time per socket. */
    const pump = async (ws) => {
      if (pumping) return;
      pumping = true;
      try {
        while (!done && socket === ws && sent < total && sent - acked < windowBytes) {
          const len = Math.min(frameBytes, total - sent, acked + windowBytes - sent);
          const bytes = await file.slice(sent, sent + len).arrayBuffer();
          if (done || socket !== ws) return;
          ws.send(bytes);
          sent += len;
        }
      } catch (e) {
        finish(new RealtimeError("READ_FAILED", `cannot read the file: ${e?.message ?? e}`, { uploadId }));
      } finally {
        pumping = false;
      }
    };

    const reconnect = (immediately) => {
      if (done) return;
      if (failures >= maxReconnects) {
        finish(new RealtimeError("DISCONNECTED", "the upload connection kept dropping", { uploadId }));
        return;
      }
      const ms = immediately ? 0 : backoffDelay(failures, backoff, env.random);
      failures += 1;
      timer = env.setTimeout(() => {
        timer = null;
        connect();
      }, ms);
    };

    const connect = async () => {
      let token;
      try {
        token = await tokenFrom(o);
      } catch (e) {
        if (e instanceof TypeError) finish(e);
        else reconnect(false);
        return;
      }
      if (done) return;
      let ws;
      try {
        ws = new env.WebSocket(streamUrl(url, token, env.baseUrl));
      } catch (e) {
        finish(new RealtimeError("BAD_URL", `cannot open the upload stream: ${e?.message ?? e}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      socket = ws;
      sent = 0;
      let refused = null;
      ws.onopen = () => {
        if (socket === ws) ws.send(JSON.stringify(buildUploadHandshake(file, meta, uploadId)));
      };
      ws.onmessage = (e) => {
        if (socket !== ws) return;
        const msg = parseMessage(e.data);
        if (!msg) return;
        const offset = msg.offset;
        const validOffset = Number.isSafeInteger(offset) && offset >= 0 && offset <= total;
        switch (msg.type) {
          case "ready":
            if (!validOffset) {
              finish(new RealtimeError("BAD_OFFSET", `ready at offset ${offset} of ${total}`, { uploadId }));
              return;
            }
            if (typeof msg.uploadId === "string") uploadId = msg.uploadId;
            if (offset > acked) failures = 0;
            acked = offset;
            sent = offset;
            progress();
            pump(ws);
            break;
          case "progress":
            if (!validOffset || offset > sent) return;
            if (offset > acked) {
              acked = offset;
              failures = 0;
              progress();
            }
            pump(ws);
            break;
          case "complete":
            acked = total;
            finish(null, msg.result);
            break;
          case "error":
            refused = msg;
            finish(
              new RealtimeError(String(msg.code ?? "ERROR"), msg.message, {
                uploadId: msg.uploadId ?? uploadId,
              }),
            );
            break;
          default:
            break;
        }
      };
      ws.onerror = () => {
        // A close event always follows; it decides.
      };
      ws.onclose = (e) => {
        if (socket !== ws) return;
        socket = null;
        if (refused) return;
        if (e.code === CLOSE.POLICY) {
          finish(new RealtimeError("REFUSED", e.reason || "the sidecar refused the upload", { uploadId }));
        } else {
          reconnect(e.code === CLOSE.TOKEN_EXPIRED);
        }
      };
    };

    connect();
  });
}

// ---- chat (CONTRACT section 8) ----------------------------------------------

/** Limits of a chat room connection; each can be overridden per room. */
export const CHAT_LIMITS = Object.freeze({
  /** sends waiting for the sidecar's answer (or for a connection) at once. */
  maxPendingSends: 100,
  /** how long a send waits for the saved message before it rejects, in ms. */
  sendTimeoutMs: 30000,
  /** message ids remembered to drop a chat message seen twice (after a re-send). */
  seenMessageIds: 1000,
  /** typing notices sent at most once per this many ms (the sidecar's rate). */
  typingIntervalMs: 1000,
});

/** The presence statuses a client may set. */
export const CHAT_STATUSES = Object.freeze(["online", "away", "busy"]);

/** A unique clientMsgId: crypto.randomUUID where it exists. */
function newClientMsgId(random) {
  const uuid = globalThis.crypto?.randomUUID?.();
  if (uuid) return uuid;
  let s = "";
  for (let i = 0; i < 4; i++) s += Math.floor(random() * 2 ** 32).toString(16).padStart(8, "0");
  return s;
}

/**
 * One room of the chat stream for this page. Events (EventTarget, each a
 * CustomEvent whose `detail` is the server's message): `history`,
 * `presence`, `chat`, `typing`, `receipt`, `error`. Reconnects with backoff
 * and joins again (a fresh `history`) after a dropped connection; sends
 * still waiting are sent again with the same clientMsgId, which the backend
 * takes as an idempotency key. Close 1008 (refused, room full) stops it.
 */
export class ChatRoom extends EventTarget {
  constructor(roomId, options = {}) {
    super();
    const o = options ?? {};
    if (typeof roomId !== "string" || !/^[A-Za-z0-9._:-]{1,128}$/.test(roomId)) {
      throw new TypeError("roomId must be 1-128 of A-Za-z0-9._:-");
    }
    if (typeof o.getToken !== "function" && typeof o.token !== "string") {
      throw new TypeError("getToken (a function) or token (a string) is required");
    }
    this.roomId = roomId;
    this.options = o;
    this.url = o.url ?? CHAT_PATH;
    this.env = socketEnvironment(o.environment);
    this.limits = { ...CHAT_LIMITS, ...(o.limits ?? {}) };
    this.backoff = {
      baseMs: o.backoff?.baseMs ?? LIMITS.backoffBaseMs,
      capMs: o.backoff?.capMs ?? LIMITS.backoffCapMs,
    };
    /** "connecting" | "open" | "reconnecting" | "stopped" */
    this.state = "connecting";
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.generation = 0;
    /** clientMsgId → { frame, resolve, reject, timer } in send order. */
    this.pending = new Map();
    /** Chat message ids already dispatched (insertion order = age). */
    this.seen = new Set();
    /** The status set by setStatus, sent again after each rejoin. */
    this.status = null;
    this.lastTypingAt = null;
    this.connect();
  }

  /** Adds a listener for `type`; returns a function that removes it. */
  on(type, fn) {
    const listener = (e) => fn(e.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /**
   * Sends a chat message; resolves with the saved message (the broadcast
   * carrying this send's clientMsgId), rejects with a RealtimeError
   * (SEND_FAILED, RATE_LIMITED, TIMEOUT, QUEUE_FULL, LEFT, REFUSED).
   */
  send(text) {
    if (this.state === "stopped") {
      return Promise.reject(new RealtimeError("LEFT", "the room was left"));
    }
    if (typeof text !== "string" || text.length === 0) {
      return Promise.reject(new TypeError("text must be a non-empty string"));
    }
    if (this.pending.size >= this.limits.maxPendingSends) {
      return Promise.reject(new RealtimeError("QUEUE_FULL", "too many messages waiting"));
    }
    const clientMsgId = newClientMsgId(this.env.random);
    const frame = JSON.stringify({ type: "chat", text, clientMsgId });
    return new Promise((resolve, reject) => {
      const timer = this.env.setTimeout(() => {
        this.settle(clientMsgId, new RealtimeError("TIMEOUT", "no answer from the chat server", { clientMsgId }));
      }, this.limits.sendTimeoutMs);
      this.pending.set(clientMsgId, { frame, resolve, reject, timer });
      // Not open yet: sent with the rest once the room is joined again.
      if (this.state === "open") this.socket?.send(frame);
    });
  }

  /** Tells the others this user is typing (at most once per typingIntervalMs). */
  typing() {
    const now = this.env.now();
    if (this.lastTypingAt !== null && now - this.lastTypingAt < this.limits.typingIntervalMs) {
      return false;
    }
    if (!this.sendIfOpen({ type: "typing" })) return false;
    this.lastTypingAt = now;
    return true;
  }

  /** Sets this user's presence ("online", "away", "busy"); kept across rejoins. */
  setStatus(status) {
    if (!CHAT_STATUSES.includes(status)) {
      throw new TypeError(`status must be one of ${CHAT_STATUSES.join(", ")}`);
    }
    this.status = status;
    return this.sendIfOpen({ type: "presence", status });
  }

  /** Marks `messageId` read (a receipt to the room). */
  ack(messageId) {
    if (typeof messageId !== "string" && typeof messageId !== "number") {
      throw new TypeError("messageId must be a string or a number");
    }
    return this.sendIfOpen({ type: "ack", messageId });
  }

  /** Leaves the room: closes the socket; sends still waiting reject with LEFT. */
  leave() {
    this.stop(new RealtimeError("LEFT", "the room was left"));
  }

  // ---- internals -----------------------------------------------------------

  sendIfOpen(msg) {
    if (this.state !== "open" || !this.socket) return false;
    this.socket.send(JSON.stringify(msg));
    return true;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  settle(clientMsgId, err, message) {
    const p = this.pending.get(clientMsgId);
    if (!p) return;
    this.pending.delete(clientMsgId);
    this.env.clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(message);
  }

  /** True the first time `id` is seen (bounded memory). */
  fresh(id) {
    if (id === undefined || id === null) return true;
    const key = String(id);
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    while (this.seen.size > this.limits.seenMessageIds) {
      this.seen.delete(this.seen.values().next().value);
    }
    return true;
  }

  stop(err) {
    if (this.state === "stopped") return;
    this.state = "stopped";
    this.generation += 1;
    if (this.timer !== null) {
      this.env.clearTimeout(this.timer);
      this.timer = null;
    }
    const ws = this.socket;
    this.socket = null;
    if (ws) {
      try {
        ws.close(CLOSE.NORMAL, "leaving");
      } catch {
        // already closing
      }
    }
    for (const id of [...this.pending.keys()]) {
      this.settle(id, new RealtimeError(err.code, err.message, { clientMsgId: id }));
    }
  }

  async connect() {
    const gen = ++this.generation;
    this.timer = null;
    let token;
    try {
      token = await tokenFrom(this.options);
    } catch {
      if (gen === this.generation) this.retry(false);
      return;
    }
    if (gen !== this.generation) return;
    let ws;
    try {
      ws = new this.env.WebSocket(streamUrl(this.url, token, this.env.baseUrl));
    } catch (e) {
      const err = new RealtimeError("BAD_URL", `cannot open the chat stream: ${e?.message ?? e}`);
      this.emit("error", { type: "error", code: err.code, message: err.message });
      this.stop(err);
      return;
    }
    this.socket = ws;
    let joined = false;
    let refusal = null;
    ws.onopen = () => {
      if (this.socket === ws) ws.send(JSON.stringify({ roomId: this.roomId }));
    };
    ws.onmessage = (e) => {
      if (this.socket !== ws) return;
      const msg = parseMessage(e.data);
      if (!msg) return;
      // Only an error right before a close names why the room was refused
      // (BAD_MESSAGE, for one, leaves the connection open).
      if (msg.type !== "error") refusal = null;
      switch (msg.type) {
        case "history": {
          joined = true;
          this.attempt = 0;
          this.state = "open";
          const messages = Array.isArray(msg.messages) ? msg.messages : [];
          for (const m of messages) this.fresh(m?.id);
          this.emit("history", { ...msg, messages });
          // The join is complete: what waited for it goes out now.
          if (this.status) ws.send(JSON.stringify({ type: "presence", status: this.status }));
          for (const p of this.pending.values()) ws.send(p.frame);
          break;
        }
        case "chat":
          if (typeof msg.clientMsgId === "string") this.settle(msg.clientMsgId, null, msg);
          if (this.fresh(msg.id)) this.emit("chat", msg);
          break;
        case "error":
          if (typeof msg.clientMsgId === "string") {
            this.settle(
              msg.clientMsgId,
              new RealtimeError(String(msg.code ?? "ERROR"), msg.message, { clientMsgId: msg.clientMsgId }),
            );
          } else {
            refusal = msg;
          }
          this.emit("error", msg);
          break;
        case "presence":
        case "typing":
        case "receipt":
          this.emit(msg.type, msg);
          break;
        default:
          break;
      }
    };
    ws.onerror = () => {
      // A close event always follows; it decides.
    };
    ws.onclose = (e) => {
      if (this.socket !== ws) return;
      this.socket = null;
      if (e.code === CLOSE.POLICY) {
        const code = refusal?.code ? String(refusal.code) : "REFUSED";
        const err = new RealtimeError(code, refusal?.message ?? e.reason ?? "refused", { closeCode: e.code });
        if (!refusal) this.emit("error", { type: "error", code, message: err.message, closeCode: e.code });
        this.stop(err);
        return;
      }
      this.state = "reconnecting";
      this.retry(e.code === CLOSE.TOKEN_EXPIRED && joined);
    };
  }

  retry(immediately) {
    if (this.state === "stopped") return;
    this.state = "reconnecting";
    const ms = immediately ? 0 : backoffDelay(this.attempt++, this.backoff, this.env.random);
    const gen = this.generation;
    this.timer = this.env.setTimeout(() => {
      if (gen === this.generation) this.connect();
    }, ms);
  }
}

/**
 * Joins chat room `roomId` (CONTRACT section 8) and returns its ChatRoom;
 * `leave()` it when done.
 */
export function joinRoom(roomId, options) {
  return new ChatRoom(roomId, options);
}
