// Test doubles for the host APIs the client uses: a scripted WebSocket,
// manual timers, an in-memory Web Locks manager, and an event target.

/** A WebSocket whose server side the test drives. */
export class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeWebSocket.instances.push(this);
  }
  static reset() {
    FakeWebSocket.instances = [];
  }
  static last() {
    return FakeWebSocket.instances.at(-1);
  }
  /** Text frames are recorded parsed; binary frames as { binary: Uint8Array }. */
  send(data) {
    this.sent.push(typeof data === "string" ? JSON.parse(data) : { binary: new Uint8Array(data) });
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
  // ---- the server's side
  open() {
    this.onopen?.({});
  }
  receive(msg) {
    this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
  }
  serverClose(code, reason = "") {
    this.onclose?.({ code, reason });
  }
  token() {
    return new URL(this.url).searchParams.get("access_token");
  }
}

/** Timers that run only when the test says so. */
export class ManualTimers {
  constructor() {
    this.pending = new Map();
    this.next = 1;
  }
  setTimeout = (f, ms) => {
    const id = this.next++;
    this.pending.set(id, { f, ms });
    return id;
  };
  clearTimeout = (id) => {
    this.pending.delete(id);
  };
  /** The delays of the timers waiting now. */
  delays() {
    return [...this.pending.values()].map((t) => t.ms);
  }
  /** Runs every timer waiting now. */
  runAll() {
    const due = [...this.pending.values()];
    this.pending.clear();
    for (const t of due) t.f();
  }
  /** Runs the timers waiting now whose delay passes `keep(ms)`. */
  runWhere(keep) {
    for (const [id, t] of [...this.pending]) {
      if (keep(t.ms)) {
        this.pending.delete(id);
        t.f();
      }
    }
  }
}

/** An exclusive-only LockManager: requests queue; release grants the next. */
export class FakeLocks {
  constructor() {
    this.held = new Map();
    this.queues = new Map();
  }
  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve, reject, signal: options.signal };
      const queue = this.queues.get(name) ?? [];
      this.queues.set(name, queue);
      options.signal?.addEventListener("abort", () => {
        const i = queue.indexOf(entry);
        if (i >= 0) {
          queue.splice(i, 1);
          reject(new DOMException("aborted", "AbortError"));
        }
      });
      queue.push(entry);
      this.grant(name);
    });
  }
  grant(name) {
    if (this.held.get(name)) return;
    const entry = this.queues.get(name)?.shift();
    if (!entry) return;
    this.held.set(name, true);
    Promise.resolve(entry.callback({ name, mode: "exclusive" })).then(
      (v) => {
        this.held.set(name, false);
        entry.resolve(v);
        this.grant(name);
      },
      (e) => {
        this.held.set(name, false);
        entry.reject(e);
        this.grant(name);
      },
    );
  }
}

/** Records dispatched window events. */
export class RecordingTarget extends EventTarget {
  constructor() {
    super();
    this.events = [];
  }
  dispatchEvent(e) {
    this.events.push({ name: e.type, detail: e.detail });
    return super.dispatchEvent(e);
  }
  named(name) {
    return this.events.filter((e) => e.name === name).map((e) => e.detail);
  }
}

/** Lets pending promise callbacks run. */
export const settle = () => new Promise((r) => setImmediate(r));

/** Lets callbacks run until `cond()` holds; fails after `rounds` turns of the event loop. */
export async function until(cond, what = "condition", rounds = 1000) {
  for (let i = 0; i < rounds; i++) {
    if (cond()) return;
    await settle();
  }
  throw new Error(`timed out waiting for ${what}`);
}
