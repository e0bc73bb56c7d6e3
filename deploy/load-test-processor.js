// Helpers for deploy/load-test.yml (artillery 2, ws engine). No
// dependencies: tokens are HS256 JWTs made with node:crypto.
//
// Custom metrics:
//   realtime.acks, realtime.event_messages, realtime.events   counters
//   realtime.errors.<CODE>                                     counter per server error code
//   realtime.delivery_latency_ms                               histogram (events carrying t_us, as
//                                                              simulate's generator publishes them)
'use strict';

const crypto = require('node:crypto');

const SECRET = process.env.JWT_SECRET || 'demo-secret';
const ORGS = Math.max(1, parseInt(process.env.LOAD_TEST_ORGS || '3', 10));
const EVENT_TIMEOUT_MS = 1000 * Math.max(1, parseInt(process.env.LOAD_TEST_EVENT_TIMEOUT_S || '20', 10));
const SERVICES = ['finance', 'guest', 'staff'];
const STREAM_PATH = '/v2/realtime/stream';

function base64url(data) {
  return Buffer.from(data).toString('base64url');
}

function mintToken(orgId) {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const now = Math.floor(Date.now() / 1000);
  const payload = base64url(JSON.stringify({ orgId, sub: `load-${orgId}`, iat: now, exp: now + 3600 }));
  const signature = crypto.createHmac('sha256', SECRET).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

// connect.function: artillery calls it before opening the socket.
function connectWithToken(wsArgs, context, done) {
  const orgId = 1 + Math.floor(Math.random() * ORGS);
  context.vars.orgId = orgId;
  wsArgs.target = wsArgs.target.replace(/\/+$/, '') + STREAM_PATH;
  wsArgs.options = wsArgs.options || {};
  wsArgs.options.headers = { ...(wsArgs.options.headers || {}), Authorization: `Bearer ${mintToken(orgId)}` };
  done();
}

// Counts every server message of the connection from the handshake on.
function track(context, events) {
  const state = { acked: false, events: 0, closed: null, waiters: [] };
  context._realtime = state;
  const notify = () => {
    for (const w of state.waiters.splice(0)) w();
  };
  context.ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch (e) {
      events.emit('counter', 'realtime.errors.NOT_JSON', 1);
      return;
    }
    if (msg.type === 'ack') {
      state.acked = true;
      events.emit('counter', 'realtime.acks', 1);
    } else if (msg.type === 'event' && Array.isArray(msg.events)) {
      state.events += msg.events.length;
      events.emit('counter', 'realtime.event_messages', 1);
      events.emit('counter', 'realtime.events', msg.events.length);
      const now = Date.now();
      for (const e of msg.events) {
        if (typeof e.t_us === 'number') {
          events.emit('histogram', 'realtime.delivery_latency_ms', Math.max(0, now - e.t_us / 1000));
        }
      }
    } else if (msg.type === 'error') {
      state.error = `${msg.code}: ${msg.message}`;
      events.emit('counter', `realtime.errors.${msg.code}`, 1);
    }
    notify();
  });
  context.ws.on('close', (code, reason) => {
    state.closed = `${code} ${reason}`;
    notify();
  });
  return state;
}

// Resolves when `ready(state)` holds; rejects after `ms` or on a close.
// (Step functions are async: artillery's ws engine only fails a virtual
// user on a rejected promise, not on an error passed to a callback.)
function waitFor(state, ready, ms, what) {
  return new Promise((resolve, reject) => {
    let timer;
    const check = () => {
      if (ready(state)) {
        clearTimeout(timer);
        return resolve();
      }
      if (state.closed) {
        clearTimeout(timer);
        return reject(new Error(`${what}: closed ${state.closed}`));
      }
      state.waiters.push(check);
    };
    timer = setTimeout(() => {
      state.waiters = state.waiters.filter((w) => w !== check);
      reject(new Error(`${what} (error: ${state.error})`));
    }, ms);
    check();
  });
}

async function subscribe(context, events) {
  const state = track(context, events);
  context.ws.send(JSON.stringify({ services: SERVICES, version: 1 }));
  events.emit('counter', 'websocket.messages_sent', 1);
  await waitFor(state, (s) => s.acked, 10000, 'no_ack');
}

async function awaitFirstEvent(context, events) {
  await waitFor(context._realtime, (s) => s.events > 0, EVENT_TIMEOUT_MS, 'no_event');
}

async function checkStillOpen(context) {
  const state = context._realtime;
  if (state.closed) throw new Error(`closed early: ${state.closed}`);
}

module.exports = { connectWithToken, subscribe, awaitFirstEvent, checkStillOpen };
