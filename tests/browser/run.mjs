// Real-browser tests: the client library (clients/js) and the ops page in
// Debian's Chromium, driven by playwright-core, against the real sidecar and
// the simulated backend (examples/browser_rig.rs, on loopback port 0).
//
//   npm --prefix tests/browser ci && node tests/browser/run.mjs
//
// Each case uses its own browser context (its own profile: its own Web
// Locks and BroadcastChannels) and its own org. Every wait polls a condition
// against a deadline. The ops page screenshot is written to
// target/browser-artifacts/ops-page.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, "..", "..");
const TARGET = process.env.CARGO_TARGET_DIR ?? join(ROOT, "target");
const ARTIFACTS = join(TARGET, "browser-artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** The longest any single wait may take. */
const WAIT_MS = 15000;

let rig; // { client, stream, admin, sim, jwtSecret, adminToken }
let rigProcess;
let rigLines;
let pageServer;
let pageOrigin;
let browser;

// ---- helpers ---------------------------------------------------------------

function b64url(s) {
  return Buffer.from(s).toString("base64url");
}

/** An HS256 token for `org` living `ttl` seconds, as the app's auth would mint. */
function mintToken(org, ttl) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const exp = Math.floor(Date.now() / 1000) + ttl;
  const body = b64url(JSON.stringify({ orgId: org, exp, sub: `user-${org}` }));
  const sig = createHmac("sha256", rig.jwtSecret).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${sig}`;
}

async function waitFor(what, check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function adminGet(path) {
  const r = await fetch(rig.admin + path, { headers: { authorization: `Bearer ${rig.adminToken}` } });
  assert.equal(r.status, 200, `${path}: ${r.status}`);
  return r.json();
}

async function setFlags(values) {
  const r = await fetch(rig.admin + "/feature-flags", {
    method: "POST",
    headers: { authorization: `Bearer ${rig.adminToken}`, "content-type": "application/json" },
    body: JSON.stringify(values),
  });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text);
}

const metrics = () => adminGet("/v2/realtime/metrics");

/** Publishes `count` events for `org` on `service` at the backend; returns their ids. */
async function publish(org, count, service = "finance") {
  const r = await fetch(rig.sim + "/_sim/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ orgId: org, service, count }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).eventIds;
}

function pageUrl(org, extra = {}) {
  const q = new URLSearchParams({
    lib: `${rig.client}/v2/realtime/client.js`,
    stream: rig.stream,
    org: String(org),
    ...extra,
  });
  return `${pageOrigin}/page.html?${q}`;
}

async function openPages(context, n, org, extra) {
  const pages = [];
  for (let i = 0; i < n; i++) {
    const page = await context.newPage();
    await page.goto(pageUrl(org, extra));
    await page.waitForFunction(() => window.__ready === true);
    pages.push(page);
  }
  return pages;
}

const state = (page) =>
  page.evaluate(() => ({
    events: window.__events,
    resync: window.__resync,
    errors: window.__errors,
    tokenCalls: window.__tokenCalls,
    isLeader: window.rt.isLeader,
    status: window.rt.state,
    lastSeq: window.rt.lastSeq,
  }));

/** The page whose tab holds the open stream, once there is exactly one leader. */
async function leaderOf(pages, timeoutMs = WAIT_MS) {
  return waitFor(
    "one leader with an open stream",
    async () => {
      const states = await Promise.all(pages.map(state));
      const leaders = states.filter((s) => s.isLeader);
      if (leaders.length !== 1 || leaders[0].status !== "open") return null;
      return pages[states.indexOf(leaders[0])];
    },
    timeoutMs,
  );
}

/** Waits until every page dispatched every id of `ids`, then checks none twice. */
async function expectEachOnce(pages, ids, what) {
  for (const page of pages) {
    await waitFor(`${what}: all ${ids.length} events in a page`, async () => {
      const got = new Set((await state(page)).events);
      return ids.every((id) => got.has(id));
    });
  }
  for (const page of pages) {
    const events = (await state(page)).events;
    const seen = new Set();
    const dups = events.filter((id) => (seen.has(id) ? true : (seen.add(id), false)));
    assert.deepEqual(dups, [], `${what}: no event dispatched twice in a page`);
  }
}

async function activeConnectionsIs(n) {
  await waitFor(`activeConnections == ${n}`, async () => (await metrics()).activeConnections === n);
}

async function newContext() {
  const context = await browser.newContext();
  await context.exposeFunction("mintToken", (org, ttl) => mintToken(org, ttl));
  return context;
}

function rigCommand(cmd) {
  rigProcess.stdin.write(cmd + "\n");
  return new Promise((resolve) => rigLines.once("line", (l) => resolve(JSON.parse(l))));
}

// ---- setup -----------------------------------------------------------------

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const build = spawnSync("cargo", ["build", "--quiet", "--example", "browser_rig"], {
    cwd: ROOT,
    stdio: ["ignore", "inherit", "inherit"],
  });
  assert.equal(build.status, 0, "cargo build --example browser_rig");
  rigProcess = spawn(join(TARGET, "debug", "examples", "browser_rig"), [], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  rigLines = createInterface({ input: rigProcess.stdout });
  rig = await new Promise((resolve, reject) => {
    rigLines.once("line", (l) => resolve(JSON.parse(l)));
    rigProcess.once("exit", (code) => reject(new Error(`browser_rig exited with ${code}`)));
  });

  // The application's pages come from their own origin (as in production);
  // the library is loaded cross-origin from the sidecar.
  const page = readFileSync(join(HERE, "page.html"));
  pageServer = createServer((req, res) => {
    if (req.url === "/elsewhere.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end("<!doctype html><title>elsewhere</title><p>another page of the app</p>");
    } else if (req.url.startsWith("/page.html")) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(page);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;

  // playwright launches with a fresh temporary profile (--user-data-dir) of
  // its own; its default switches turn the back/forward cache off, which the
  // bfcache case needs on.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    headless: true,
    ignoreDefaultArgs: ["--disable-back-forward-cache"],
  });
});

after(async () => {
  await browser?.close();
  pageServer?.close();
  if (rigProcess && rigProcess.exitCode === null) {
    rigProcess.stdin.end("quit\n");
    await new Promise((r) => rigProcess.once("exit", r));
  }
});

// ---- the client library ----------------------------------------------------

test("the sidecar serves the library with an ETag and answers 304 to a revalidation", async () => {
  const url = `${rig.client}/v2/realtime/client.js`;
  const r = await fetch(url);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /^text\/javascript/);
  assert.match(r.headers.get("cache-control"), /max-age=/);
  const etag = r.headers.get("etag");
  assert.match(etag, /^"[0-9a-f]{32}"$/);
  assert.equal(await r.text(), readFileSync(join(ROOT, "clients", "js", "realtime-client.js"), "utf8"));
  const again = await fetch(url, { headers: { "if-none-match": etag } });
  assert.equal(again.status, 304);
});

test("three pages of one org share one stream; each receives every event once; the leader's close hands over with resume", async (t) => {
  const org = 101;
  await activeConnectionsIs(0);
  const context = await newContext();
  const pages = await openPages(context, 3, org);
  const leader = await leaderOf(pages);
  await activeConnectionsIs(1);
  const followers = pages.filter((p) => p !== leader);
  for (const f of followers) assert.equal((await state(f)).status, "following");

  const first = await publish(org, 5);
  await expectEachOnce(pages, first, "three pages");
  assert.equal((await metrics()).activeConnections, 1, "still exactly one stream");

  // Close the leader; events published meanwhile must still reach the others.
  const closedAt = Date.now();
  await leader.close();
  const gap = await publish(org, 3);
  const next = await leaderOf(followers, 5000);
  const takeoverMs = Date.now() - closedAt;
  t.diagnostic(`takeover: a follower held an open stream ${takeoverMs} ms after the leader page closed`);
  assert.ok(takeoverMs < 1000, `a follower held the stream ${takeoverMs} ms after the leader closed`);
  const later = await publish(org, 2);
  await expectEachOnce(followers, [...first, ...gap, ...later], "after takeover");
  assert.deepEqual((await state(next)).resync, [], "the takeover was resumed, no refetch needed");
  await activeConnectionsIs(1);
  await context.close();
  await activeConnectionsIs(0);
});

test("a sidecar restart: the pages reconnect, are told to refetch, and receive what follows once", async () => {
  const org = 102;
  const context = await newContext();
  const pages = await openPages(context, 2, org);
  await leaderOf(pages);
  const before = await publish(org, 3);
  await expectEachOnce(pages, before, "before the restart");

  const answer = await rigCommand("restart");
  assert.deepEqual(answer, { restarted: true });
  // A new run's positions are unrelated to the old lastSeq: resumed false.
  for (const page of pages) {
    await waitFor("a resync in every page", async () => (await state(page)).resync.includes("finance"));
  }
  await leaderOf(pages);
  await activeConnectionsIs(1);
  const afterRestart = await publish(org, 3);
  await expectEachOnce(pages, [...before, ...afterRestart], "after the restart");
  await context.close();
  await activeConnectionsIs(0);
});

test("a flag flip to native and back moves the stream without a duplicate or a loss", async () => {
  const org = 103;
  const context = await newContext();
  const pages = await openPages(context, 2, org);
  await leaderOf(pages);
  const published = [];
  let publishing = true;
  const publisher = (async () => {
    while (publishing) {
      published.push(...(await publish(org, 2)));
      await new Promise((r) => setTimeout(r, 30));
    }
  })();
  try {
    await waitFor("some events before the flip", () => published.length >= 6);
    await setFlags({ REALTIME_STREAMING_V2: true, REALTIME_ROLLOUT_PERCENT: 100 });
    await waitFor("the org streams natively", async () => (await metrics()).connectionsByMode?.native === 1);
    const atFlip = published.length;
    await waitFor("events during native", () => published.length >= atFlip + 6);
    await setFlags({ REALTIME_STREAMING_V2: false });
    await waitFor("the org polls again", async () => (await metrics()).connectionsByMode?.poll === 1);
    const atBack = published.length;
    await waitFor("events after the flip back", () => published.length >= atBack + 6);
  } finally {
    publishing = false;
    await publisher;
  }
  try {
    await expectEachOnce(pages, published, "across two flips");
    assert.equal((await metrics()).activeConnections, 1, "the flip closed nothing");
  } finally {
    await setFlags({ REALTIME_STREAMING_V2: false, REALTIME_ROLLOUT_PERCENT: 0 });
    await context.close();
  }
  await activeConnectionsIs(0);
});

test("close 4001 (token expired): getToken is called again and the stream resumes", async () => {
  const org = 104;
  const context = await newContext();
  const [page] = await openPages(context, 1, org, { firstTtl: "1" });
  await waitFor("a second token after the first expired", async () => (await state(page)).tokenCalls >= 2);
  await leaderOf([page]);
  const ids = await publish(org, 3);
  await expectEachOnce([page], ids, "after the token refresh");
  const s = await state(page);
  assert.deepEqual(s.errors, []);
  assert.deepEqual(s.resync, [], "the reconnect resumed");
  await context.close();
  await activeConnectionsIs(0);
});

test("pagehide gives the stream to another tab and the page enters the back/forward cache; pageshow rejoins", async () => {
  const org = 106;
  const context = await newContext();
  const pages = await openPages(context, 2, org);
  const leader = await leaderOf(pages);
  const other = pages.find((p) => p !== leader);
  await leader.evaluate(() => {
    window.__pageshows = [];
    addEventListener("pageshow", (e) => window.__pageshows.push(e.persisted));
  });
  const before = await publish(org, 2);
  await expectEachOnce(pages, before, "before leaving");

  await leader.goto(`${pageOrigin}/elsewhere.html`);
  // The other tab takes the lock the leaving page released.
  await leaderOf([other]);
  const meanwhile = await publish(org, 2);
  await expectEachOnce([other], [...before, ...meanwhile], "while the first page is away");

  // A page restored from the cache fires no load event: wait for the commit.
  await leader.goBack({ waitUntil: "commit" });
  await leader.waitForFunction(() => Array.isArray(window.__pageshows) && window.__pageshows.length === 1);
  assert.deepEqual(await leader.evaluate(() => window.__pageshows), [true], "restored from the back/forward cache");
  await waitFor("the restored page follows again", async () => (await state(leader)).status === "following");
  const after = await publish(org, 2);
  await expectEachOnce([leader], [...before, ...after], "after coming back");
  await activeConnectionsIs(1);
  await context.close();
  await activeConnectionsIs(0);
});

test("close 1008 (refused handshake): every page stops and reports, no reconnect loop", async () => {
  const org = 105;
  const total = async () => (await metrics()).totalConnections;
  const before = await total();
  const context = await newContext();
  // A property filter the sidecar refuses: BAD_HANDSHAKE, close 1008.
  const pages = await openPages(context, 2, org, { filters: JSON.stringify({ propertyId: { bad: 1 } }) });
  for (const page of pages) {
    await waitFor("realtime-error and a stopped client", async () => {
      const s = await state(page);
      return s.status === "stopped" && s.errors.length === 1;
    });
    const s = await state(page);
    assert.equal(s.errors[0].code, 1008);
  }
  // A loop would reconnect within the first backoff bound (500 ms); watch
  // for four times that.
  await new Promise((r) => setTimeout(r, 2000));
  assert.equal((await total()) - before, 1, "one connection attempt for the whole browser");
  const calls = await Promise.all(pages.map(async (p) => (await state(p)).tokenCalls));
  assert.equal(calls.reduce((a, b) => a + b, 0), 1, "getToken called once");
  await context.close();
});

// ---- the ops page -------------------------------------------------------------

test("uploadDocument streams version 2, stops on abort and resumes with the uploadId; joinRoom sends and receives", async () => {
  const org = 107;
  const context = await newContext();
  const [uploader, other] = await openPages(context, 2, org);
  const size = 6 * 1048576 + 7;
  const upload = await uploader.evaluate(
    async ({ lib, client, org, size }) => {
      const { uploadDocument } = await import(lib);
      const bytes = new Uint8Array(size);
      for (let i = 0; i < size; i++) bytes[i] = i % 251;
      const file = new File([bytes], "passport.pdf", { type: "application/pdf" });
      const meta = { documentType: "aadhaar", guestId: "g-1", propertyId: 1 };
      const url = client + "/v2/documents/upload/stream";
      const getToken = () => window.mintToken(org, 3600);
      const controller = new AbortController();
      let aborted = null;
      try {
        await uploadDocument(file, meta, {
          url,
          getToken,
          signal: controller.signal,
          onProgress: (p) => {
            if (p.loaded >= 1048576) controller.abort();
          },
        });
      } catch (e) {
        aborted = { name: e.name, uploadId: e.uploadId };
      }
      const resumedAt = [];
      const result = await uploadDocument(file, meta, {
        url,
        getToken,
        uploadId: aborted?.uploadId,
        onProgress: (p) => resumedAt.push(p.loaded),
      });
      return { aborted, resumedAt: resumedAt[0], last: resumedAt.at(-1), result };
    },
    { lib: `${rig.client}/v2/realtime/client.js`, client: rig.client, org, size },
  );
  assert.equal(upload.aborted?.name, "AbortError");
  assert.ok(upload.aborted.uploadId, "the abort names the upload to resume");
  assert.ok(upload.resumedAt >= 1048576, `resumed at ${upload.resumedAt}, not from the start`);
  assert.equal(upload.last, size);
  assert.match(upload.result.fileId, /^doc-/);
  assert.equal(upload.result.ocrResult.bytes, size, "the backend got the whole file once");

  const join = (page) =>
    page.evaluate(
      async ({ lib, client, org }) => {
        const { joinRoom } = await import(lib);
        window.__chat = [];
        window.room = joinRoom("property-107", {
          url: client + "/v2/collaboration/chat/stream",
          getToken: () => window.mintToken(org, 3600),
        });
        window.room.on("chat", (m) => window.__chat.push(m.id));
        await new Promise((resolve) => window.room.on("history", resolve));
      },
      { lib: `${rig.client}/v2/realtime/client.js`, client: rig.client, org },
    );
  await join(uploader);
  await join(other);
  const saved = await uploader.evaluate(() => window.room.send("hello from the browser"));
  assert.equal(saved.text, "hello from the browser");
  assert.ok(saved.clientMsgId && saved.id);
  await waitFor("the other page received the message", async () =>
    (await other.evaluate(() => window.__chat)).includes(saved.id),
  );
  await uploader.evaluate(() => window.room.leave());
  await other.evaluate(() => window.room.leave());
  await context.close();
});

test("ops page: token once, rollout slider with confirmation changes the flags version and the evaluation", async () => {
  const context = await browser.newContext({ viewport: { width: 1360, height: 1100 } });
  const page = await context.newPage();
  await page.goto(rig.admin + "/");
  // The sidecar has an admin token: the page asks for it.
  await page.locator("#admin-token").waitFor({ state: "visible" });
  await page.fill("#admin-token", "not-the-token");
  await page.click("#login-submit");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("refused"));
  await page.fill("#admin-token", rig.adminToken);
  await page.click("#login-submit");
  await page.waitForFunction(() => document.getElementById("flags-version").textContent !== "–");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("realtime-edge-admin-token")), rig.adminToken);

  // Evaluate an org, then turn native streaming on at 100 %.
  const org = 4242;
  await page.fill("#eval-org", String(org));
  await page.click("#eval-go");
  await page.waitForFunction(() => document.getElementById("eval-mode")?.textContent === "poll");
  const versionBefore = Number(await page.textContent("#flags-version"));

  await page.click("#master");
  await page.locator("#confirm").waitFor({ state: "visible" });
  await page.click("#confirm-yes");
  await page.waitForFunction((v) => Number(document.getElementById("flags-version").textContent) > v, versionBefore);

  await page.locator("#rollout").fill("100");
  assert.equal(await page.textContent("#rollout-value"), "100%");
  await page.click("#rollout-apply");
  await page.locator("#confirm").waitFor({ state: "visible" });
  assert.match(await page.textContent("#confirm-text"), /→ 100/);
  await page.click("#confirm-yes");
  await page.waitForFunction(() => document.getElementById("eval-mode")?.textContent === "native");
  const versionAfter = Number(await page.textContent("#flags-version"));
  assert.ok(versionAfter >= versionBefore + 2, `version ${versionBefore} → ${versionAfter}`);
  const flags = await adminGet("/feature-flags");
  assert.equal(flags.flags.REALTIME_ROLLOUT_PERCENT, 100);
  assert.equal(flags.sources.REALTIME_ROLLOUT_PERCENT, "override");
  assert.equal(flags.version, versionAfter);
  assert.match(await page.textContent("#eval-reason"), /reason/);
  await page.waitForFunction(() => document.querySelectorAll("#history tr").length >= 2);
  await page.waitForFunction(() => document.getElementById("fig-active") !== null);

  // A reload keeps the token (sessionStorage): no second prompt.
  await page.reload();
  await page.waitForFunction(() => document.getElementById("status").textContent === "connected");
  assert.equal(await page.locator("#admin-token").isVisible(), false);

  // Cancelling a confirmation changes nothing.
  const v = Number(await page.textContent("#flags-version"));
  await page.click("#master");
  await page.click("#confirm-no");
  assert.equal(await page.isChecked("#master"), true);
  assert.equal((await adminGet("/feature-flags")).version, v);

  await page.fill("#eval-org", String(org));
  await page.click("#eval-go");
  await page.waitForFunction(() => document.getElementById("eval-mode")?.textContent === "native");

  // A bad list is refused with the API's message and changes nothing.
  await page.fill("#denylist", "x");
  await page.click("#denylist-save");
  await page.click("#confirm-yes");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("not an org id"));
  assert.equal((await adminGet("/feature-flags")).version, v);
  // The deny list wins over the rollout; resetting the override undoes it.
  await page.fill("#denylist", `7, ${org}`);
  await page.click("#denylist-save");
  await page.click("#confirm-yes");
  await page.waitForFunction(() => document.getElementById("eval-mode")?.textContent === "poll");
  assert.match(await page.textContent("#eval-reason"), /deny/i);
  assert.deepEqual((await adminGet("/feature-flags")).flags.REALTIME_DENYLIST_ORGS, [7, org]);
  await page.click("#flags tr:has-text('REALTIME_DENYLIST_ORGS') button");
  await page.click("#confirm-yes");
  await page.waitForFunction(() => document.getElementById("eval-mode")?.textContent === "native");
  assert.equal((await adminGet("/feature-flags")).sources.REALTIME_DENYLIST_ORGS, "default");
  // Live figures with a browser streaming natively for that org.
  const app = await newContext();
  const [client] = await openPages(app, 1, org);
  await leaderOf([client]);
  await page.waitForFunction(
    () => document.getElementById("fig-active")?.textContent === "1" && document.getElementById("fig-native")?.textContent === "1",
  );
  await expectEachOnce([client], await publish(org, 40), "while the ops page watches");
  await page.waitForFunction(() => Number(document.getElementById("fig-events-rate")?.textContent) > 0);
  await page.screenshot({ path: join(ARTIFACTS, "ops-page.png"), fullPage: true });
  await app.close();
  await setFlags({ REALTIME_STREAMING_V2: false, REALTIME_ROLLOUT_PERCENT: 0 });
  await context.close();
});
