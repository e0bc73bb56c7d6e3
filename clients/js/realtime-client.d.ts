// TypeScript declarations for realtime-client.js (realtime-edge's browser client).

/** A service of the unified stream, e.g. "finance", "guest", "staff". */
export type ServiceName = string;

export interface RealtimeClientOptions {
  /** The stream URL: wss://host/v2/realtime/stream (http(s) and relative URLs are accepted). */
  url: string;
  /** The org of the token; tabs of one org share one connection. */
  orgId: string | number;
  /** Called on every (re)connect; the token travels as the access_token query parameter. */
  getToken: () => string | Promise<string>;
  /** The services to subscribe to (non-empty). */
  services: ServiceName[];
  /** Optional server-side filter, e.g. { propertyId: 1 }. */
  filters?: { propertyId?: string | number } & Record<string, unknown>;
  /** Reconnect backoff bounds (full jitter). Defaults: 500 ms base, 30 s cap. */
  backoff?: { baseMs?: number; capMs?: number };
  /** The eventId cache to de-duplicate against (default: one per page). */
  eventIds?: EventIdCache;
  /** Host APIs, for tests and non-browser hosts; each defaults to the browser's. */
  environment?: Partial<RealtimeEnvironment>;
}

export interface RealtimeEnvironment {
  WebSocket: { new (url: string): WebSocket };
  locks: LockManager | undefined;
  BroadcastChannel: { new (name: string): BroadcastChannel } | undefined;
  /** Where window events are dispatched (window). */
  target: EventTarget;
  setTimeout: (f: () => void, ms: number) => unknown;
  clearTimeout: (t: unknown) => void;
  random: () => number;
  now: () => number;
  baseUrl: string | undefined;
}

export type ClientState =
  | "idle"
  | "following"
  | "connecting"
  | "open"
  | "reconnecting"
  | "suspended"
  | "stopped";

export class RealtimeClient {
  constructor(options: RealtimeClientOptions);
  start(): void;
  stop(): void;
  readonly state: ClientState;
  /** True while this tab holds the org's lock and owns the WebSocket. */
  readonly isLeader: boolean;
  /** True when tabs share one connection (Web Locks and BroadcastChannel exist). */
  readonly shared: boolean;
  /** The last stream position seen; sent as lastSeq on reconnect. */
  readonly lastSeq: number | null;
}

/** detail of `<service>-stream-events`. */
export interface StreamEventsDetail<E = StreamEvent> {
  events: E[];
}
/** detail of `<service>-stream-health`. */
export interface StreamHealthDetail {
  healthy: boolean;
  lastEventAt: number | null;
  error?: { code: string; message: string };
}
/** detail of `<service>-stream-resync`. */
export interface StreamResyncDetail {
  orgId: string | number;
}
/** detail of `realtime-error` (the server refused the client; it stopped). */
export interface RealtimeErrorDetail {
  orgId: string | number;
  code: number;
  reason: string;
}

export interface StreamEvent {
  eventId: string;
  orgId: string | number;
  propertyId?: string | number;
  type?: string;
  timestamp?: string;
  [key: string]: unknown;
}

export const LIMITS: Readonly<{
  dedupIdsPerOrg: number;
  dedupOrgs: number;
  backoffBaseMs: number;
  backoffCapMs: number;
}>;
export const CLOSE: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  POLICY: 1008;
  INTERNAL: 1011;
  TRY_AGAIN_LATER: 1013;
  TOKEN_EXPIRED: 4001;
}>;
export function lockName(orgId: string | number): string;
export function channelName(orgId: string | number): string;

export class EventIdCache {
  constructor(bounds?: { idsPerOrg?: number; maxOrgs?: number });
  /** True when eventId was seen for orgId before; records it otherwise. */
  seen(orgId: string | number, eventId: string): boolean;
  size(orgId: string | number): number;
  orgIds(): string[];
}
export const sharedEventIds: EventIdCache;

export function backoffDelay(
  attempt: number,
  bounds?: { baseMs?: number; capMs?: number },
  random?: () => number,
): number;
export function closeAction(code: number): "stop" | "refresh" | "reconnect";
export function buildHandshake(o: {
  services: ServiceName[];
  filters?: object;
  lastSeq?: number | null;
}): { services: ServiceName[]; version: 1; filters?: object; lastSeq?: number };
export function streamUrl(url: string, token: string, base?: string): string;

export class StreamDispatcher {
  constructor(o: {
    orgId: string | number;
    services: ServiceName[];
    dedup: EventIdCache;
    emit: (name: string, detail: object) => void;
    now?: () => number;
  });
  lastSeq: number | null;
  handle(msg: unknown, context?: { resumeRequested?: boolean }): void;
  disconnected(): void;
}

declare global {
  interface WindowEventMap {
    "realtime-error": CustomEvent<RealtimeErrorDetail>;
  }
}
