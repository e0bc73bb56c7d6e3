// uploadDocument against a scripted sidecar: handshake, window and
// backpressure, progress, resume after a drop, error codes, abort.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { UPLOAD_LIMITS, uploadDocument } from "../realtime-client.js";
import { FakeWebSocket, ManualTimers, settle, until } from "./fakes.js";

beforeEach(() => FakeWebSocket.reset());

const URL_ = "ws://edge.test/v2/documents/upload/stream";

/** A file of `size` bytes whose byte i is i mod 251 (so misplaced bytes show). */
function fileOf(size, name = "passport.pdf", type = "application/pdf") {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = i % 251;
  return { file: new File([bytes], name, { type }), bytes };
}

function start(file, { progress = [], ...options } = {}) {
  const timers = new ManualTimers();
  const promise = uploadDocument(
    file,
    { documentType: "aadhaar", guestId: "g-7", propertyId: 3 },
    {
      url: URL_,
      getToken: async () => "tok",
      onProgress: (p) => progress.push(p),
      environment: {
        WebSocket: FakeWebSocket,
        setTimeout: timers.setTimeout,
        clearTimeout: timers.clearTimeout,
        random: () => 0.5,
        baseUrl: undefined,
      },
      ...options,
    },
  );
  // Unhandled until the test awaits it: keep node from reporting it early.
  promise.catch(() => {});
  return { promise, timers, progress };
}

/** The binary frames sent on `ws`. */
const frames = (ws) => ws.sent.filter((m) => m.binary).map((m) => m.binary);
const bytesSent = (ws) => frames(ws).reduce((n, f) => n + f.length, 0);

/** Opens the next new socket (after `previous`) and checks it carries the token. */
async function opened(previous = null) {
  await until(
    () => FakeWebSocket.instances.length > 0 && FakeWebSocket.last() !== previous && FakeWebSocket.last().onopen,
    "a new socket",
  );
  const ws = FakeWebSocket.last();
  assert.equal(ws.token(), "tok");
  ws.open();
  return ws;
}

test("sends the version 2 handshake and 1 MiB frames, never more than 4 MiB unacknowledged", async () => {
  const size = 6 * 1048576 + 5;
  const { file, bytes } = fileOf(size);
  const { promise } = start(file);
  const ws = await opened();
  assert.deepEqual(ws.sent[0], {
    filename: "passport.pdf",
    filesize: size,
    mimetype: "application/pdf",
    documentType: "aadhaar",
    guestId: "g-7",
    propertyId: 3,
    version: 2,
  });
  ws.receive({ type: "ready", uploadId: "u1", offset: 0 });
  await until(() => bytesSent(ws) === UPLOAD_LIMITS.windowBytes, "a full window");
  await settle();
  assert.equal(bytesSent(ws), 4 * 1048576, "stops at the window");
  assert.ok(frames(ws).every((f) => f.length === 1048576));
  ws.receive({ type: "progress", uploadId: "u1", offset: 262144 });
  await until(() => bytesSent(ws) === 4 * 1048576 + 262144, "the window refilled");
  await settle();
  assert.equal(bytesSent(ws), 4 * 1048576 + 262144, "only what the ack freed");
  ws.receive({ type: "progress", uploadId: "u1", offset: 4 * 1048576 });
  await until(() => bytesSent(ws) === size, "the whole file");
  assert.ok(frames(ws).every((f) => f.length <= 1048576));
  const received = Buffer.concat(frames(ws).map((f) => Buffer.from(f)));
  assert.ok(received.equals(Buffer.from(bytes)), "the file's bytes, in order");
  ws.receive({ type: "progress", uploadId: "u1", offset: size });
  ws.receive({ type: "complete", uploadId: "u1", result: { fileId: "f1", url: "/documents/f1" } });
  assert.deepEqual(await promise, { fileId: "f1", url: "/documents/f1" });
  assert.equal(ws.closed.code, 1000);
});

test("reports progress as the sidecar acknowledges", async () => {
  const { file } = fileOf(3000);
  const { promise, progress } = start(file, { frameBytes: 1000, windowBytes: 2000 });
  const ws = await opened();
  ws.receive({ type: "ready", uploadId: "u2", offset: 0 });
  await until(() => bytesSent(ws) === 2000, "a window");
  ws.receive({ type: "progress", uploadId: "u2", offset: 1000 });
  await until(() => bytesSent(ws) === 3000, "the rest");
  ws.receive({ type: "progress", uploadId: "u2", offset: 1000 }); // repeated: not reported again
  ws.receive({ type: "progress", uploadId: "u2", offset: 9999 }); // past what was sent: ignored
  ws.receive({ type: "progress", uploadId: "u2", offset: 3000 });
  ws.receive({ type: "complete", uploadId: "u2", result: { fileId: "f2" } });
  await promise;
  assert.deepEqual(progress, [
    { loaded: 0, total: 3000, uploadId: "u2" },
    { loaded: 1000, total: 3000, uploadId: "u2" },
    { loaded: 3000, total: 3000, uploadId: "u2" },
  ]);
});

test("a dropped connection resumes with the uploadId at the sidecar's offset", async () => {
  const { file, bytes } = fileOf(10000);
  const { promise, timers } = start(file, { frameBytes: 1000, windowBytes: 4000 });
  const first = await opened();
  first.receive({ type: "ready", uploadId: "u3", offset: 0 });
  await until(() => bytesSent(first) === 4000, "a window");
  first.receive({ type: "progress", uploadId: "u3", offset: 3000 });
  await until(() => bytesSent(first) === 7000, "the window refilled");
  first.serverClose(1006);
  assert.deepEqual(timers.delays(), [250], "backoff with full jitter before reconnecting");
  timers.runAll();
  const second = await opened(first);
  assert.equal(second.sent[0].uploadId, "u3");
  assert.equal(second.sent[0].version, 2);
  // The sidecar wrote a little more than it acknowledged before the drop.
  second.receive({ type: "ready", uploadId: "u3", offset: 5000 });
  await until(() => bytesSent(second) === 4000, "a window from the offset");
  const resent = 7000 - 5000;
  assert.ok(resent <= 4000, "at most one window sent twice");
  second.receive({ type: "progress", uploadId: "u3", offset: 9000 });
  await until(() => bytesSent(second) === 5000, "the rest");
  const held = Buffer.concat([
    Buffer.from(bytes.subarray(0, 5000)),
    ...frames(second).map((f) => Buffer.from(f)),
  ]);
  assert.ok(held.equals(Buffer.from(bytes)), "the resumed bytes continue the file exactly");
  second.receive({ type: "complete", uploadId: "u3", result: { fileId: "f3" } });
  assert.deepEqual(await promise, { fileId: "f3" });
});

test("an error message rejects with the sidecar's code", async () => {
  for (const code of [
    "BAD_HANDSHAKE",
    "FILE_TOO_LARGE",
    "UNSUPPORTED_TYPE",
    "UNKNOWN_UPLOAD",
    "UPSTREAM_REJECTED",
    "UPSTREAM_ERROR",
    "BUSY",
  ]) {
    FakeWebSocket.reset();
    const { file } = fileOf(10);
    const { promise, timers } = start(file, { uploadId: "u4" });
    const ws = await opened();
    ws.receive({ type: "error", code, message: `refused: ${code}` });
    ws.serverClose(code === "BUSY" ? 1013 : 1008);
    await assert.rejects(promise, (e) => e.code === code && e.message === `refused: ${code}` && e.uploadId === "u4");
    assert.equal(FakeWebSocket.instances.length, 1, `${code}: no reconnect`);
    assert.deepEqual(timers.delays(), []);
  }
});

test("a close 1008 without an error message rejects as REFUSED", async () => {
  const { file } = fileOf(10);
  const { promise } = start(file);
  const ws = await opened();
  ws.serverClose(1008, "unauthorized");
  await assert.rejects(promise, (e) => e.code === "REFUSED");
});

test("gives up after maxReconnects drops in a row without getting further", async () => {
  const { file } = fileOf(10);
  const { promise, timers } = start(file, { maxReconnects: 2 });
  const a = await opened();
  a.serverClose(1006);
  timers.runAll();
  const b = await opened(a);
  b.serverClose(1006);
  timers.runAll();
  (await opened(b)).serverClose(1006);
  await assert.rejects(promise, (e) => e.code === "DISCONNECTED");
  assert.equal(FakeWebSocket.instances.length, 3);
});

test("abort closes the socket, rejects with AbortError and a later call resumes", async () => {
  const { file } = fileOf(5000);
  const controller = new AbortController();
  const { promise, timers } = start(file, { frameBytes: 1000, windowBytes: 2000, signal: controller.signal });
  const ws = await opened();
  ws.receive({ type: "ready", uploadId: "u5", offset: 0 });
  await until(() => bytesSent(ws) === 2000, "a window");
  controller.abort();
  await assert.rejects(promise, (e) => e.name === "AbortError" && e.uploadId === "u5");
  assert.equal(ws.closed.code, 1000);
  ws.receive({ type: "progress", uploadId: "u5", offset: 2000 });
  await settle();
  assert.equal(bytesSent(ws), 2000, "nothing sent after the abort");
  assert.deepEqual(timers.delays(), [], "no reconnect");

  FakeWebSocket.reset();
  const again = start(file, { frameBytes: 1000, windowBytes: 2000, uploadId: "u5" });
  const next = await opened();
  assert.equal(next.sent[0].uploadId, "u5");
  next.receive({ type: "ready", uploadId: "u5", offset: 2000 });
  await until(() => bytesSent(next) === 2000, "a window from 2000");
  assert.equal(frames(next)[0][0], 2000 % 251);
  next.receive({ type: "complete", uploadId: "u5", result: { fileId: "f5" } });
  assert.deepEqual(await again.promise, { fileId: "f5" });
});

test("an already aborted signal never opens a socket", async () => {
  const { file } = fileOf(10);
  const { promise } = start(file, { signal: AbortSignal.abort() });
  await assert.rejects(promise, (e) => e.name === "AbortError");
  await settle();
  assert.equal(FakeWebSocket.instances.length, 0);
});
