// index.mjs - the ESM entry of the package shmb: the CommonJS module lib/shmb.js, re-exported.
import shmb from './shmb.js';

export const { Client, Session, Cursor, Attrs, ShmbError, ShmbEventStore, sidNode,
	libraryVersion } = shmb;
export default shmb;
