// RealtimeClient against scripted host APIs: connect, resume, close codes,
// leader election and fan-out between "tabs" of one process.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { EventIdCache, RealtimeClient } from "../realtime-client.js";
import { FakeLocks, FakeWebSocket, ManualTimers, RecordingTarget, settle } from "./fakes.js";

beforeEach(() => FakeWebSocket.reset());

/** A client in one "tab"; `shared` gives it locks and a channel. */
function tab({ locks, shared = false, services = ["finance"], tokens } = {}) {
  const timers = new ManualTimers();
  const target = new RecordingTarget();
  let calls = 0;
  const rt = new RealtimeClient({
    url: "ws://edge.test/v2/realtime/stream",
    orgId: 42,
    services,
    getToken: async () => {
      calls += 1;
      return tokens ? tokens[Math.min(calls, tokens.length) - 1] : `token-${calls}`;
    },
    eventIds: new EventIdCache(),
    environment: {
      WebSocket: FakeWebSocket,
      locks: shared ? locks : undefined,
      BroadcastChannel: shared ? BroadcastChannel : undefined,
      target,
      setTimeout: timers.setTimeout,
      clearTimeout: timers.clearTimeout,
      random: () => 0.5,
      baseUrl: undefined,
    },
  });
  return { rt, timers, target, tokenCalls: () => calls };
}

/** Opens the newest socket and answers its handshake. */
function accept(ack = { type: "ack", seq: 10, mode: "poll", resumed: false }) {
  const ws = FakeWebSocket.last();
  ws.open();
  ws.receive(ack);
  return ws;
}

test("connects with the token in access_token and sends the handshake", async () => {
  const { rt, target } = tab({ services: ["finance", "staff"] });
  rt.start();
  await settle();
  const ws = FakeWebSocket.last();
  assert.equal(ws.token(), "token-1");
  ws.open();
  assert.deepEqual(ws.sent, [{ services: ["finance", "staff"], version: 1 }]);
  ws.receive({ type: "ack", seq: 0, mode: "poll", resumed: false });
  assert.equal(rt.state, "open");
  ws.receive({ type: "event", service: "staff", seq: 3, events: [{ eventId: "e1", orgId: 42 }] });
  assert.deepEqual(target.named("staff-stream-events"), [{ events: [{ eventId: "e1", orgId: 42 }] }]);
  rt.stop();
  assert.equal(ws.closed.code, 1000);
});

test("a dropped stream reconnects after jittered backoff and resumes with lastSeq", async () => {
  const { rt, timers, target } = tab();
  rt.start();
  await settle();
  const first = accept();
  first.receive({ type: "event", service: "finance", seq: 17, events: [{ eventId: "a" }] });
  first.serverClose(1006);
  assert.deepEqual(timers.delays(), [250], "attempt 0: half of the 500 ms bound with random 0.5");
  assert.equal(target.named("finance-stream-health").at(-1).healthy, false);
  timers.runAll();
  await settle();
  const second = FakeWebSocket.last();
  assert.notEqual(second, first);
  second.serverClose(1006); // refused before any ack: the bound doubles
  assert.deepEqual(timers.delays(), [500]);
  timers.runAll();
  await settle();
  const third = FakeWebSocket.last();
  third.open();
  assert.deepEqual(third.sent[0], { services: ["finance"], version: 1, lastSeq: 17 });
  third.receive({ type: "ack", seq: 17, resumed: true });
  third.receive({ type: "event", service: "finance", seq: 18, events: [{ eventId: "a" }, { eventId: "b" }] });
  assert.deepEqual(
    target.named("finance-stream-events").map((d) => d.events.map((e) => e.eventId)),
    [["a"], ["b"]],
    "the replayed repeat is dropped",
  );
  assert.equal(target.named("finance-stream-resync").length, 0);
  rt.stop();
});

test("a reconnect that is not resumed dispatches resync", async () => {
  const { rt, timers, target } = tab();
  rt.start();
  await settle();
  accept({ type: "ack", seq: 5, resumed: false }).serverClose(1001);
  assert.deepEqual(timers.delays(), [250], "1001: reconnect after jitter");
  timers.runAll();
  await settle();
  accept({ type: "ack", seq: 900000, resumed: false });
  assert.deepEqual(target.named("finance-stream-resync"), [{ orgId: 42 }]);
  assert.equal(rt.lastSeq, 900000);
  rt.stop();
});

test("1013 reconnects after jitter, with the attempt count reset by each ack", async () => {
  const { rt, timers } = tab();
  rt.start();
  await settle();
  accept().serverClose(1013);
  assert.deepEqual(timers.delays(), [250]);
  timers.runAll();
  await settle();
  accept().serverClose(1013);
  assert.deepEqual(timers.delays(), [250], "an acked stream starts the backoff over");
  rt.stop();
  assert.deepEqual(timers.delays(), [], "stop cancels the pending reconnect");
});

test("4001 asks getToken for a fresh token and reconnects at once", async () => {
  const { rt, timers, tokenCalls } = tab();
  rt.start();
  await settle();
  accept().serverClose(4001, "token expired");
  assert.deepEqual(timers.delays(), [0]);
  timers.runAll();
  await settle();
  assert.equal(tokenCalls(), 2);
  assert.equal(FakeWebSocket.last().token(), "token-2");
  rt.stop();
});

test("1008 stops without a retry and dispatches realtime-error", async () => {
  const { rt, timers, target } = tab();
  rt.start();
  await settle();
  const ws = FakeWebSocket.last();
  ws.open();
  ws.receive({ type: "error", code: "BAD_HANDSHAKE", message: "filters must be an object", seq: 0 });
  ws.serverClose(1008, "bad handshake");
  assert.deepEqual(timers.delays(), []);
  assert.equal(rt.state, "stopped");
  assert.deepEqual(target.named("realtime-error"), [{ orgId: 42, code: 1008, reason: "bad handshake" }]);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("a failing getToken is retried with backoff", async () => {
  const timers = new ManualTimers();
  let calls = 0;
  const rt = new RealtimeClient({
    url: "ws://edge.test/s",
    orgId: 1,
    services: ["finance"],
    getToken: async () => {
      calls += 1;
      if (calls === 1) throw new Error("auth server down");
      return "ok";
    },
    environment: { WebSocket: FakeWebSocket, locks: undefined, target: new RecordingTarget(), ...timers, random: () => 0.5 },
  });
  rt.start();
  await settle();
  assert.equal(FakeWebSocket.instances.length, 0);
  assert.deepEqual(timers.delays(), [250]);
  timers.runAll();
  await settle();
  assert.equal(FakeWebSocket.last().token(), "ok");
  rt.stop();
});

test("options are checked", () => {
  const ok = { url: "ws://x/s", orgId: 1, services: ["finance"], getToken: () => "t" };
  assert.throws(() => new RealtimeClient({ ...ok, url: "" }), TypeError);
  assert.throws(() => new RealtimeClient({ ...ok, orgId: undefined }), TypeError);
  assert.throws(() => new RealtimeClient({ ...ok, services: [] }), TypeError);
  assert.throws(() => new RealtimeClient({ ...ok, getToken: "t" }), TypeError);
});

test("tabs share one socket; a follower takes over with lastSeq when the leader stops", async () => {
  const locks = new FakeLocks();
  const a = tab({ locks, shared: true });
  const b = tab({ locks, shared: true });
  a.rt.start();
  await settle();
  b.rt.start();
  await settle();
  assert.equal(FakeWebSocket.instances.length, 1, "one socket for both tabs");
  assert.equal(a.rt.isLeader, true);
  assert.equal(b.rt.state, "following");
  const ws = accept({ type: "ack", seq: 1, resumed: false });
  ws.receive({ type: "event", service: "finance", seq: 30, events: [{ eventId: "x" }] });
  // BroadcastChannel delivers asynchronously.
  const deadline = Date.now() + 5000;
  while (b.target.named("finance-stream-events").length === 0 && Date.now() < deadline) await settle();
  assert.deepEqual(b.target.named("finance-stream-events"), [{ events: [{ eventId: "x" }] }]);
  assert.equal(b.rt.lastSeq, 30);

  a.rt.stop(); // releases the lock: b's queued request is granted
  while (FakeWebSocket.instances.length < 2 && Date.now() < deadline) await settle();
  assert.equal(b.rt.isLeader, true);
  const next = FakeWebSocket.last();
  next.open();
  assert.equal(next.sent[0].lastSeq, 30);
  b.rt.stop();
});

test("pagehide releases the lock and socket; pageshow from the bfcache takes it again", async () => {
  const locks = new FakeLocks();
  const a = tab({ locks, shared: true });
  a.rt.start();
  await settle();
  const ws = accept();
  a.target.dispatchEvent(new Event("pagehide"));
  assert.equal(ws.closed.code, 1000);
  assert.equal(a.rt.state, "suspended");
  assert.equal(a.rt.isLeader, false);
  const show = new Event("pageshow");
  show.persisted = true;
  a.target.dispatchEvent(show);
  await settle();
  await settle();
  assert.equal(a.rt.isLeader, true);
  assert.equal(FakeWebSocket.instances.length, 2);
  a.rt.stop();
});

test("a refused leader stops every tab, including one opened later, with one socket in all", async () => {
  const locks = new FakeLocks();
  const a = tab({ locks, shared: true });
  const b = tab({ locks, shared: true });
  a.rt.start();
  await settle();
  b.rt.start();
  await settle();
  const ws = FakeWebSocket.last();
  ws.open();
  ws.serverClose(1008, "bad handshake");
  const deadline = Date.now() + 5000;
  while (b.rt.state !== "stopped" && Date.now() < deadline) await settle();
  assert.equal(b.rt.state, "stopped");
  assert.deepEqual(b.target.named("realtime-error"), [{ orgId: 42, code: 1008, reason: "bad handshake" }]);
  // The refused leader still holds the lock: a new tab learns of the refusal.
  const c = tab({ locks, shared: true });
  c.rt.start();
  while (c.rt.state !== "stopped" && Date.now() < deadline) await settle();
  assert.equal(c.rt.state, "stopped");
  assert.equal(c.target.named("realtime-error").length, 1);
  assert.equal(FakeWebSocket.instances.length, 1);
  // The application stopping the refused tab releases the lock.
  a.rt.stop();
  const d = tab({ locks, shared: true });
  d.rt.start();
  while (FakeWebSocket.instances.length < 2 && Date.now() < deadline) await settle();
  assert.equal(d.rt.isLeader, true, "a fresh start tries again");
  d.rt.stop();
});
