// joinRoom against a scripted sidecar: join and history, send/ack
// correlation by clientMsgId, SEND_FAILED and RATE_LIMITED, rejoin after a
// drop, stop on 1008.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { joinRoom } from "../realtime-client.js";
import { FakeWebSocket, ManualTimers, settle, until } from "./fakes.js";

beforeEach(() => FakeWebSocket.reset());

const SEND_TIMEOUT_MS = 60000;

function room({ roomId = "property-123", limits = {} } = {}) {
  const timers = new ManualTimers();
  let now = 0;
  const events = [];
  let tokens = 0;
  const r = joinRoom(roomId, {
    url: "ws://edge.test/v2/collaboration/chat/stream",
    getToken: async () => `tok-${++tokens}`,
    limits: { sendTimeoutMs: SEND_TIMEOUT_MS, ...limits },
    environment: {
      WebSocket: FakeWebSocket,
      setTimeout: timers.setTimeout,
      clearTimeout: timers.clearTimeout,
      random: () => 0.5,
      now: () => now,
      baseUrl: undefined,
    },
  });
  for (const type of ["history", "presence", "chat", "typing", "receipt", "error"]) {
    r.on(type, (detail) => events.push({ type, detail }));
  }
  return {
    r,
    timers,
    events,
    of: (type) => events.filter((e) => e.type === type).map((e) => e.detail),
    advance: (ms) => {
      now += ms;
    },
  };
}

/** Opens the next new socket and answers the join with `history`. */
async function joined(previous = null, messages = []) {
  await until(
    () => FakeWebSocket.instances.length > 0 && FakeWebSocket.last() !== previous && FakeWebSocket.last().onopen,
    "a new socket",
  );
  const ws = FakeWebSocket.last();
  ws.open();
  ws.receive({ type: "history", messages });
  return ws;
}

/** The chat frames sent on `ws`. */
const chats = (ws) => ws.sent.filter((m) => m.type === "chat");

const saved = (id, clientMsgId, text = "hi") => ({
  type: "chat",
  id,
  userId: "u1",
  userName: "Asha",
  text,
  timestamp: "2026-11-27T10:00:00Z",
  clientMsgId,
});

test("joins with the roomId and dispatches history, presence, typing and receipts", async () => {
  const { r, of } = room();
  const ws = await joined(null, [{ id: "m1", text: "earlier" }]);
  assert.equal(ws.token(), "tok-1");
  assert.deepEqual(ws.sent[0], { roomId: "property-123" });
  assert.equal(r.state, "open");
  assert.deepEqual(of("history"), [{ type: "history", messages: [{ id: "m1", text: "earlier" }] }]);
  ws.receive({ type: "presence", members: [{ userId: "u2", userName: "Ravi", status: "online" }] });
  ws.receive({ type: "typing", userId: "u2", userName: "Ravi" });
  ws.receive({ type: "receipt", userId: "u2", messageId: "m1" });
  assert.equal(of("presence").length, 1);
  assert.deepEqual(of("typing"), [{ type: "typing", userId: "u2", userName: "Ravi" }]);
  assert.deepEqual(of("receipt"), [{ type: "receipt", userId: "u2", messageId: "m1" }]);
  r.leave();
  assert.equal(ws.closed.code, 1000);
});

test("send resolves with the saved message carrying its clientMsgId", async () => {
  const { r, of } = room();
  const ws = await joined();
  const first = r.send("hello");
  const second = r.send("again");
  const [a, b] = chats(ws);
  assert.equal(a.text, "hello");
  assert.equal(b.text, "again");
  assert.ok(a.clientMsgId && b.clientMsgId && a.clientMsgId !== b.clientMsgId);
  // Someone else's message and the answers out of order.
  ws.receive(saved("m9", "someone-else", "yo"));
  ws.receive(saved("m11", b.clientMsgId, "again"));
  ws.receive(saved("m10", a.clientMsgId, "hello"));
  assert.equal((await first).id, "m10");
  assert.equal((await second).id, "m11");
  assert.deepEqual(
    of("chat").map((m) => m.id),
    ["m9", "m11", "m10"],
  );
});

test("SEND_FAILED and RATE_LIMITED reject that send only; the room stays", async () => {
  const { r, of } = room();
  const ws = await joined();
  const failed = r.send("one");
  const limited = r.send("two");
  const fine = r.send("three");
  const [a, b, c] = chats(ws);
  ws.receive({ type: "error", code: "SEND_FAILED", message: "backend 500", clientMsgId: a.clientMsgId });
  ws.receive({ type: "error", code: "RATE_LIMITED", message: "slow down", clientMsgId: b.clientMsgId });
  await assert.rejects(failed, (e) => e.code === "SEND_FAILED" && e.clientMsgId === a.clientMsgId);
  await assert.rejects(limited, (e) => e.code === "RATE_LIMITED");
  ws.receive(saved("m1", c.clientMsgId, "three"));
  assert.equal((await fine).text, "three");
  assert.equal(of("error").length, 2);
  assert.equal(r.state, "open");
  r.leave();
});

test("typing is throttled, setStatus and ack send their frames", async () => {
  const { r, advance } = room();
  const ws = await joined();
  assert.equal(r.typing(), true);
  assert.equal(r.typing(), false, "within a second: not sent");
  advance(1000);
  assert.equal(r.typing(), true);
  assert.equal(r.setStatus("away"), true);
  assert.throws(() => r.setStatus("gone"), TypeError);
  assert.equal(r.ack("m7"), true);
  assert.deepEqual(ws.sent.slice(1), [
    { type: "typing" },
    { type: "typing" },
    { type: "presence", status: "away" },
    { type: "ack", messageId: "m7" },
  ]);
  r.leave();
});

test("a dropped connection rejoins after backoff: history again, waiting sends and status re-sent", async () => {
  const { r, timers, of } = room();
  const first = await joined();
  r.setStatus("busy");
  const pending = r.send("are you there?");
  const [sent] = chats(first);
  first.serverClose(1006);
  assert.equal(r.state, "reconnecting");
  assert.equal(r.typing(), false, "nothing is sent while down");
  const queued = r.send("queued while down");
  assert.equal(chats(first).length, 1);
  // The send timeouts wait too; run only the reconnect.
  assert.ok(timers.delays().includes(250));
  timers.runWhere((ms) => ms !== SEND_TIMEOUT_MS);
  const second = await joined(first, [{ id: "m0", text: "old" }]);
  assert.equal(second.token(), "tok-2");
  assert.deepEqual(second.sent[0], { roomId: "property-123" });
  assert.deepEqual(second.sent[1], { type: "presence", status: "busy" });
  const resent = chats(second);
  assert.equal(resent.length, 2);
  assert.equal(resent[0].clientMsgId, sent.clientMsgId, "same clientMsgId: the backend saves it once");
  assert.equal(of("history").length, 2);
  second.receive(saved("m1", resent[0].clientMsgId));
  second.receive(saved("m1", resent[0].clientMsgId)); // delivered twice: dispatched once
  second.receive(saved("m2", resent[1].clientMsgId));
  assert.equal((await pending).id, "m1");
  assert.equal((await queued).id, "m2");
  assert.deepEqual(
    of("chat").map((m) => m.id),
    ["m1", "m2"],
  );
  r.leave();
});

test("close 1008 stops: error dispatched, waiting sends rejected, no reconnect", async () => {
  const { r, timers, of } = room();
  const ws = await joined();
  const pending = r.send("hello");
  ws.receive({ type: "error", code: "ROOM_FULL", message: "the room is full" });
  ws.serverClose(1008);
  await assert.rejects(pending, (e) => e.code === "ROOM_FULL");
  assert.equal(r.state, "stopped");
  assert.deepEqual(of("error").map((e) => e.code), ["ROOM_FULL"]);
  assert.deepEqual(timers.delays(), [], "no reconnect, no timers left");
  await settle();
  assert.equal(FakeWebSocket.instances.length, 1);
  await assert.rejects(r.send("more"), (e) => e.code === "LEFT");
});

test("a send that gets no answer rejects with TIMEOUT; leave rejects the rest with LEFT", async () => {
  const { r, timers } = room();
  await joined();
  const lost = r.send("lost");
  timers.runWhere((ms) => ms === SEND_TIMEOUT_MS);
  await assert.rejects(lost, (e) => e.code === "TIMEOUT");
  const left = r.send("bye");
  r.leave();
  await assert.rejects(left, (e) => e.code === "LEFT");
});

test("a bad roomId is refused before connecting", () => {
  assert.throws(() => joinRoom("../x", { token: "t" }), TypeError);
  assert.throws(() => joinRoom("x".repeat(129), { token: "t" }), TypeError);
  assert.equal(FakeWebSocket.instances.length, 0);
});
