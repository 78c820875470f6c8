// mcp.d.ts - TypeScript declarations of shmb/mcp (lib/mcp.mjs).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Client, SessionOptions } from './index.js';

export interface ClusterSessionsOptions {
	/** An attached shmb Client (one per worker). */
	client: Client;
	/** A new McpServer (or low-level Server) per session per worker: your single-process one. */
	createServer: () => { connect(transport: unknown): Promise<void>; close(): Promise<void> };
	/** Tenant of the shmbroker sessions (default 'mcp'). */
	tenant?: string;
	/** Who a request is from (your authentication's user id): a session answers only requests of
	 * the principal that initialized it, others get 404. Default: none. */
	principalOf?: (req: IncomingMessage) => string | null | undefined;
	/** Origins allowed besides loopback ones; others get 403. */
	allowedOrigins?: string[];
	/** Sessions a worker keeps built (least recently used dropped; default 1000). */
	maxLocalSessions?: number;
	/** Largest POST body (default 4 MiB; 413 above). */
	maxBodyBytes?: number;
	/** TTLs of the sessions initialize creates. */
	sessionOptions?: SessionOptions;
	/** Extra options of every StreamableHTTPServerTransport. */
	transportOptions?: Record<string, unknown>;
	onerror?: (err: Error) => void;
}

export interface ClusterSessions {
	handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
	/** Drops every session this worker built (they live on in shmbroker). */
	close(): void;
	readonly localSessions: number;
}

export declare function clusterSessions(options: ClusterSessionsOptions): ClusterSessions;
