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

// ---- uploads (upload version 2) ----------------------------------------------

/** Host APIs of the upload and chat sockets, for tests and non-browser hosts. */
export interface SocketEnvironment {
  WebSocket: { new (url: string): WebSocket };
  setTimeout: (f: () => void, ms: number) => unknown;
  clearTimeout: (t: unknown) => void;
  random: () => number;
  now: () => number;
  /** What relative URLs are resolved against (the page's location). */
  baseUrl: string | undefined;
}

/** How the socket is authorised: getToken (called on every connect) or a fixed token. */
export type TokenSource =
  | { getToken: () => string | Promise<string>; token?: undefined }
  | { token: string; getToken?: undefined };

/** What the handshake says about the document (filename and mimetype default to the file's). */
export interface UploadMeta {
  documentType?: string;
  guestId?: string | number;
  propertyId?: string | number;
  filename?: string;
  mimetype?: string;
}

export interface UploadProgress {
  /** Bytes the sidecar has durably written. */
  loaded: number;
  total: number;
  /** Pass it as options.uploadId to resume after an abort or a rejection. */
  uploadId: string | null;
}

export type UploadOptions = TokenSource & {
  /** Default "/v2/documents/upload/stream" (relative to the page; http(s) becomes ws(s)). */
  url?: string;
  onProgress?: (p: UploadProgress) => void;
  /** Aborting closes the socket and rejects with an AbortError; the partial file stays for a resume. */
  signal?: AbortSignal;
  /** Resume an earlier upload (same org and user) at the offset the sidecar holds. */
  uploadId?: string;
  /** Bytes sent but not acknowledged at most; default 4194304 (the sidecar's uploads.window_bytes). */
  windowBytes?: number;
  /** Largest binary frame; default and maximum 1048576. */
  frameBytes?: number;
  /** Reconnects in a row without the upload getting further before it rejects DISCONNECTED; default 8. */
  maxReconnects?: number;
  backoff?: { baseMs?: number; capMs?: number };
  environment?: Partial<SocketEnvironment>;
};

/** The backend's result, e.g. { fileId, url, ocrResult }. */
export type UploadResult = Record<string, unknown>;

/**
 * Streams `file` with upload version 2; resolves with the `complete` message's result.
 * Rejects with a RealtimeError whose code is the sidecar's (BAD_HANDSHAKE,
 * FILE_TOO_LARGE, UNSUPPORTED_TYPE, UNKNOWN_UPLOAD, UPSTREAM_REJECTED,
 * UPSTREAM_ERROR, BUSY, …) or the client's (REFUSED, DISCONNECTED,
 * BAD_OFFSET, READ_FAILED, BAD_URL), or with an AbortError (`uploadId` set).
 */
export function uploadDocument(file: Blob, meta: UploadMeta, options: UploadOptions): Promise<UploadResult>;
export function buildUploadHandshake(
  file: Blob & { name?: string },
  meta: UploadMeta,
  uploadId?: string | null,
): UploadMeta & { filename: string; filesize: number; mimetype: string; version: 2; uploadId?: string };

export const UPLOAD_LIMITS: Readonly<{ frameBytes: number; windowBytes: number; maxReconnects: number }>;
export const UPLOAD_PATH: "/v2/documents/upload/stream";
export const CHAT_PATH: "/v2/collaboration/chat/stream";

/** A refusal: the protocol's error code or one of the client's own. */
export class RealtimeError extends Error {
  constructor(code: string, message?: string, extra?: object);
  readonly name: "RealtimeError";
  readonly code: string;
  /** uploads: the upload to resume. */
  readonly uploadId?: string | null;
  /** chat: the send it concerns. */
  readonly clientMsgId?: string;
  /** chat: the close code that stopped the room (1008). */
  readonly closeCode?: number;
}

// ---- chat --------------------------------------------------------------------

export type ChatStatus = "online" | "away" | "busy";

export interface ChatMessage {
  id: string;
  userId: string;
  userName: string;
  text: string;
  timestamp: string;
  [key: string]: unknown;
}
export interface ChatEventMap {
  history: { type: "history"; messages: ChatMessage[] };
  presence:
    | { type: "presence"; members: { userId: string; userName: string; status: ChatStatus | "offline" }[] }
    | { type: "presence"; userId: string; userName: string; status: ChatStatus | "offline" };
  chat: { type: "chat"; clientMsgId?: string } & ChatMessage;
  typing: { type: "typing"; userId: string; userName: string };
  receipt: { type: "receipt"; userId: string; messageId: string };
  /** SEND_FAILED, RATE_LIMITED, BAD_MESSAGE, ROOM_FULL, … (closeCode set when the room stopped). */
  error: { type: "error"; code: string; message?: string; clientMsgId?: string; closeCode?: number };
}

export type JoinRoomOptions = TokenSource & {
  /** Default "/v2/collaboration/chat/stream" (relative to the page; http(s) becomes ws(s)). */
  url?: string;
  limits?: Partial<typeof CHAT_LIMITS>;
  backoff?: { baseMs?: number; capMs?: number };
  environment?: Partial<SocketEnvironment>;
};

/** A joined room. Events are CustomEvents whose detail is the server's message. */
export class ChatRoom extends EventTarget {
  constructor(roomId: string, options: JoinRoomOptions);
  readonly roomId: string;
  readonly state: "connecting" | "open" | "reconnecting" | "stopped";
  /** Listens for `type` with the message as argument; returns the unsubscribe function. */
  on<K extends keyof ChatEventMap>(type: K, fn: (detail: ChatEventMap[K]) => void): () => void;
  /**
   * Resolves with the saved message; rejects with a RealtimeError (SEND_FAILED,
   * RATE_LIMITED, BAD_MESSAGE, TIMEOUT, QUEUE_FULL, LEFT, ROOM_FULL/REFUSED).
   * Queued while reconnecting and re-sent after the rejoin with the same clientMsgId.
   */
  send(text: string): Promise<ChatEventMap["chat"]>;
  /** False when not sent (not connected, or within typingIntervalMs of the last). */
  typing(): boolean;
  /** Kept and sent again after each rejoin; false when not connected now. */
  setStatus(status: ChatStatus): boolean;
  ack(messageId: string | number): boolean;
  leave(): void;
}
export function joinRoom(roomId: string, options: JoinRoomOptions): ChatRoom;
export const CHAT_LIMITS: Readonly<{
  maxPendingSends: number;
  sendTimeoutMs: number;
  seenMessageIds: number;
  typingIntervalMs: number;
}>;
export const CHAT_STATUSES: readonly ChatStatus[];

declare global {
  interface WindowEventMap {
    "realtime-error": CustomEvent<RealtimeErrorDetail>;
  }
}
