// index.d.ts - TypeScript declarations of the package shmb (lib/shmb.js, lib/mcp.mjs).
/// <reference types="node" />

/** Every library error: code is the library's name without its prefix, errno its value. */
export declare class ShmbError extends Error {
	readonly code: 'EINVAL' | 'ENOENT' | 'EPERM' | 'EFULL' | 'ETOOBIG' | 'EOVERRUN' | 'EBROKER' |
		'EVERSION' | 'ENOMEM' | 'EIO' | 'ECORRUPT' | 'EACCES' | 'ENOTSUP' | 'ESTALE' |
		'ECONFLICT' | 'ENOWORKER' | 'ENOREADER' | 'EQUOTA' | 'EFORK' | 'ECLOSED' | 'EBUSY' |
		string;
	readonly errno: number;
	/** After EOVERRUN from next(): how many ids were skipped. */
	readonly lagged?: number;
}

export interface SessionOptions {
	/** ms; 0 or absent: the broker's default. */
	inactivityTtlMs?: number;
	absoluteTtlMs?: number;
}

export interface ShmbEvent {
	/** Below 2^53: exact as a number. */
	id: number;
	stream: number;
	kind: number;
	tsMs: number;
	/** A publisher died before committing: no data. */
	gap: boolean;
	data: Buffer | null;
}

export interface SessionStat {
	sid: string;
	tenant: string;
	principal: string | null;
	createdAtMs: number;
	lastAccessedAtMs: number;
	inactivityTtlMs: number;
	absoluteTtlMs: number;
	lastEventId: number;
	oldestEventId: number;
	subscribers: number;
}

/** One event of a session image (Client.restore): ids ascending, 1..lastEventId. */
export interface ImageEvent {
	/** A safe integer >= 1. */
	id: number;
	/** 0..2^32-1, as given to publish(). */
	stream: number;
	/** 0..65535. */
	kind: number;
	/** Wall clock at the original publish, ms (0..2^53-1). */
	tsMs: number;
	/** The payload (a string is stored as UTF-8); null/absent for a gap. */
	data?: Buffer | ArrayBufferView | ArrayBuffer | string | null;
	/** The id holds no payload (readers skip it). */
	gap?: boolean;
}

/** A session as another node (or a dump) had it, for Client.restore (docs/multi-host.md). */
export interface SessionImage {
	/** 32 hex characters: the id is kept. */
	sid: string;
	tenant: string;
	principal?: string | null;
	/** Wall clock, ms, > 0. */
	createdAtMs: number;
	lastAccessedAtMs: number;
	/** ms; 0 or absent: none. */
	inactivityTtlMs?: number;
	absoluteTtlMs?: number;
	/** The next publish() returns lastEventId + 1. */
	lastEventId: number;
	events?: ImageEvent[];
	/** key -> value (a string is stored as UTF-8). */
	attrs?: Record<string, Buffer | ArrayBufferView | ArrayBuffer | string> |
		Map<string, Buffer | ArrayBufferView | ArrayBuffer | string> | null;
}

export declare class Client {
	private constructor();
	/** Attach to broker instance name (default $SHMB_NAME or 'default'), off the event loop. */
	static attach(name?: string | null): Promise<Client>;
	readonly name: string;
	readonly closed: boolean;
	create(tenant: string, principal?: string | null, options?: SessionOptions): Promise<string>;
	open(sid: string, tenant: string, principal?: string | null): Session;
	delete(sid: string, tenant: string, principal?: string | null): Promise<void>;
	/** The node_id of the broker (0: none), from the segment. */
	readonly nodeId: number;
	/**
	 * Brings a session another node had into this broker with the same id, off the event loop;
	 * resolves to the number of events left out (older than the ring's window). Rejects with
	 * ShmbError ECONFLICT when a session with this id exists (open it then).
	 */
	restore(image: SessionImage): Promise<number>;
	/** Closes its sessions and cursors (their followers end) and detaches. */
	close(): void;
}

export declare class Attrs {
	private constructor();
	entry(key: string): { value: Buffer; version: number } | null;
	get(key: string): Buffer | null;
	getString(key: string): string | null;
	set(key: string, value: Buffer | ArrayBufferView | ArrayBuffer | string): void;
	/** Compare-and-set on the version (0: must be unset); false on a conflict. */
	setIf(key: string, value: Buffer | ArrayBufferView | ArrayBuffer | string, version: number): boolean;
	/** false if it was unset. */
	delete(key: string): boolean;
}

export declare class Session {
	private constructor();
	readonly id: string;
	readonly client: Client;
	readonly tenant: string;
	readonly principal: string | null;
	readonly attrs: Attrs;
	publish(data: Buffer | ArrayBufferView | ArrayBuffer | string,
		options?: { stream?: number; kind?: number }): number;
	cursor(after?: number | bigint, options?: { stream?: number }): Cursor;
	stat(): SessionStat;
	subscribe(): void;
	unsubscribe(): void;
	close(): void;
}

export declare class Cursor implements Iterable<ShmbEvent> {
	private constructor();
	readonly session: Session;
	readonly position: number;
	/** Never blocks: null when nothing is new. */
	next(): ShmbEvent | null;
	[Symbol.iterator](): Iterator<ShmbEvent>;
	/** Every event as it comes; ends when the session ends or the cursor, session or client is closed. */
	follow(): AsyncGenerator<ShmbEvent, void, undefined>;
	close(): void;
}

/** The MCP SDK's EventStore kept in one shmbroker session (works with SDK 1.32.2). */
export declare class ShmbEventStore {
	constructor(session: Session);
	readonly session: Session;
	storeEvent(streamId: string, message: unknown): Promise<string>;
	getStreamIdForEventId(eventId: string): Promise<string | undefined>;
	replayEventsAfter(lastEventId: string,
		{ send }: { send: (eventId: string, message: unknown) => Promise<void> }): Promise<string>;
}

export declare const libraryVersion: string;
/** The node tag of a session id (its first 4 hex characters); ShmbError EINVAL for a non-id. */
export declare function sidNode(sid: string): number;
