// The client's pure logic: eventId LRU, backoff, close codes, handshake,
// URL, and the message → window event mapping.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  EventIdCache,
  LIMITS,
  StreamDispatcher,
  backoffDelay,
  buildHandshake,
  closeAction,
  streamUrl,
} from "../realtime-client.js";

test("the eventId cache flags a repeat and forgets the least recently used id past its bound", () => {
  const c = new EventIdCache({ idsPerOrg: 3, maxOrgs: 3 });
  assert.equal(c.seen(1, "a"), false);
  assert.equal(c.seen(1, "a"), true);
  c.seen(1, "b");
  c.seen(1, "c");
  // "a" was refreshed by its repeat, so "b" is now the oldest...
  assert.equal(c.seen(1, "a"), true);
  c.seen(1, "d"); // ...and goes first.
  assert.equal(c.size(1), 3);
  assert.equal(c.seen(1, "b"), false);
  assert.equal(c.seen(1, "d"), true);
});

test("the eventId cache keeps ids per org and at most maxOrgs orgs", () => {
  const c = new EventIdCache({ idsPerOrg: 10, maxOrgs: 3 });
  c.seen(1, "x");
  assert.equal(c.seen(2, "x"), false, "orgs do not share ids");
  c.seen(3, "x");
  c.seen(1, "y"); // org 1 used again: org 2 is now the least recent
  c.seen(4, "x");
  assert.deepEqual(c.orgIds(), ["3", "1", "4"]);
  assert.equal(c.seen(1, "x"), true);
  assert.equal(c.seen(2, "x"), false, "org 2 was forgotten");
});

test("the default cache holds 1000 ids per org and 3 orgs", () => {
  const c = new EventIdCache();
  for (let i = 0; i < 1500; i++) c.seen(7, `e${i}`);
  assert.equal(c.size(7), LIMITS.dedupIdsPerOrg);
  assert.equal(c.seen(7, "e499"), false, "evicted");
  assert.equal(c.seen(7, "e1499"), true, "kept");
  for (const org of [8, 9, 10]) c.seen(org, "a");
  assert.equal(c.orgIds().length, LIMITS.dedupOrgs);
  assert.throws(() => new EventIdCache({ idsPerOrg: 0 }), RangeError);
});

test("backoff is full jitter under an exponential bound capped at 30 s", () => {
  const top = () => 0.999999;
  assert.equal(backoffDelay(0, {}, () => 0), 0);
  assert.equal(backoffDelay(0, {}, top), 499);
  assert.equal(backoffDelay(1, {}, top), 999);
  assert.equal(backoffDelay(3, {}, top), 3999);
  assert.equal(backoffDelay(6, {}, top), 29999, "32 s bound capped to 30 s");
  assert.equal(backoffDelay(5000, {}, top), 29999, "no overflow for a huge attempt");
  assert.equal(backoffDelay(-3, {}, top), 499, "nonsense attempts count as the first");
  assert.equal(backoffDelay(2, {}, () => 0.5), 1000);
  assert.equal(backoffDelay(2, { baseMs: 100, capMs: 300 }, top), 299);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(4, {});
    assert.ok(d >= 0 && d < 8000, `${d} in [0, 8000)`);
  }
});

test("close codes map to stop, refresh or reconnect", () => {
  assert.equal(closeAction(1008), "stop");
  assert.equal(closeAction(4001), "refresh");
  for (const code of [1000, 1001, 1006, 1011, 1013]) assert.equal(closeAction(code), "reconnect");
});

test("the handshake carries services, version 1, and filters and lastSeq only when set", () => {
  assert.deepEqual(buildHandshake({ services: ["finance"] }), { services: ["finance"], version: 1 });
  assert.deepEqual(buildHandshake({ services: ["a", "b"], filters: { propertyId: 3 }, lastSeq: 42 }), {
    services: ["a", "b"],
    version: 1,
    filters: { propertyId: 3 },
    lastSeq: 42,
  });
  assert.deepEqual(buildHandshake({ services: ["a"], filters: {}, lastSeq: null }), {
    services: ["a"],
    version: 1,
  });
});

test("the token travels in access_token; http(s) and relative URLs become ws(s)", () => {
  assert.equal(
    streamUrl("wss://api.example.com/v2/realtime/stream", "t o+k"),
    "wss://api.example.com/v2/realtime/stream?access_token=t+o%2Bk",
  );
  assert.equal(streamUrl("http://h:1/s?x=1", "t"), "ws://h:1/s?x=1&access_token=t");
  assert.equal(
    streamUrl("/v2/realtime/stream", "t", "https://app.example.com/page"),
    "wss://app.example.com/v2/realtime/stream?access_token=t",
  );
});

function dispatcher(services = ["finance", "staff"]) {
  const out = [];
  let now = 1000;
  const d = new StreamDispatcher({
    orgId: 42,
    services,
    dedup: new EventIdCache(),
    emit: (name, detail) => out.push({ name, detail }),
    now: () => now,
  });
  return { d, out, tick: (ms) => (now += ms) };
}

test("events are dispatched per service, de-duplicated, with a health event", () => {
  const { d, out } = dispatcher();
  d.handle({ type: "ack", seq: 10, mode: "poll", resumed: false });
  assert.equal(d.lastSeq, 10);
  out.length = 0;
  d.handle({ type: "event", service: "finance", seq: 12, events: [{ eventId: "a" }, { eventId: "b" }] });
  d.handle({ type: "event", service: "finance", seq: 13, events: [{ eventId: "b" }, { eventId: "c" }] });
  d.handle({ type: "event", service: "finance", seq: 14, events: [{ eventId: "c" }] });
  assert.deepEqual(
    out.filter((e) => e.name === "finance-stream-events").map((e) => e.detail.events.map((x) => x.eventId)),
    [["a", "b"], ["c"]],
    "repeats are dropped; a batch of only repeats dispatches nothing",
  );
  const health = out.filter((e) => e.name === "finance-stream-health");
  assert.equal(health.length, 3);
  assert.deepEqual(health[0].detail, { healthy: true, lastEventAt: 1000 });
  assert.equal(d.lastSeq, 14);
});

test("lastSeq only grows within a connection and is reset by an ack", () => {
  const { d } = dispatcher();
  d.handle({ type: "ack", seq: 100, resumed: false });
  d.handle({ type: "event", service: "finance", seq: 105, events: [] });
  d.handle({ type: "event", service: "finance", seq: 103, events: [] });
  d.handle({ type: "ping", seq: 900 });
  assert.equal(d.lastSeq, 105, "pings and older events do not move it");
  d.handle({ type: "ack", seq: 7, resumed: false });
  assert.equal(d.lastSeq, 7, "a new run's position is adopted");
});

test("a reconnect that was not resumed dispatches resync for every service", () => {
  const { d, out } = dispatcher();
  d.handle({ type: "ack", seq: 1, resumed: false }, { resumeRequested: false });
  assert.equal(out.filter((e) => e.name.endsWith("-stream-resync")).length, 0, "first connect: nothing missed");
  d.handle({ type: "ack", seq: 5, resumed: true }, { resumeRequested: true });
  assert.equal(out.filter((e) => e.name.endsWith("-stream-resync")).length, 0, "resumed: nothing missed");
  d.handle({ type: "ack", seq: 9, resumed: false }, { resumeRequested: true });
  assert.deepEqual(
    out.filter((e) => e.name.endsWith("-stream-resync")).map((e) => e.name),
    ["finance-stream-resync", "staff-stream-resync"],
  );
});

test("an upstream error makes that service unhealthy; a disconnect makes all unhealthy", () => {
  const { d, out, tick } = dispatcher();
  d.handle({ type: "event", service: "staff", seq: 3, events: [{ eventId: "s" }] });
  tick(500);
  out.length = 0;
  d.handle({ type: "error", service: "finance", code: "UPSTREAM_ERROR", message: "503", seq: 3 });
  assert.deepEqual(out, [
    {
      name: "finance-stream-health",
      detail: { healthy: false, lastEventAt: null, error: { code: "UPSTREAM_ERROR", message: "503" } },
    },
  ]);
  out.length = 0;
  d.disconnected();
  assert.deepEqual(out, [
    { name: "finance-stream-health", detail: { healthy: false, lastEventAt: null } },
    { name: "staff-stream-health", detail: { healthy: false, lastEventAt: 1000 } },
  ]);
});

test("malformed messages are ignored", () => {
  const { d, out } = dispatcher();
  for (const m of [null, 3, "x", [], { type: "event" }, { type: "event", service: 1, events: [] }, { type: "event", service: "finance", events: "no" }, { type: "mystery" }]) {
    d.handle(m);
  }
  assert.equal(out.filter((e) => e.name.endsWith("-stream-events")).length, 0);
});
