// @crdt-sync/sdk: the client of crdt-sync's SyncFrame feed, for browsers and Node.
// No build step and no runtime dependencies: import it as an ES module, e.g. from
// the server itself at /web/sdk/index.js. See README.md beside this file.

export { createFrameClient, tokenIdentity } from './frame-client.js'
export { Backoff, retryAfterMs } from './backoff.js'
export { openQueue, MemoryQueue, IndexedDbQueue } from './offline-queue.js'
export { Pool, merge, keyOf } from './pool.js'
export { openWebSocket, openSse } from './transport.js'
export { SseParser } from './sse.js'
