// The offline queue: mutations not yet acknowledged by the server, oldest first.
//
// Kept in IndexedDB where there is one (a browser: it survives a reload, and other
// tabs of the same queue hear of changes through a BroadcastChannel), in memory
// otherwise (Node, a browser with storage blocked). The client keeps its own
// in-memory copy as the authority for this page and writes through: a queue here
// only has to persist and reload, in order.

/**
 * One queued mutation, as sent to `POST /sync/v1/mutations` (plus `seq`, its place).
 * @typedef {object} QueuedMutation
 * @property {number} seq Increasing within a queue: the replay order.
 * @property {string} client_tx_id Idempotency key: a replay is applied once.
 * @property {string} t Record type.
 * @property {string} id Record id.
 * @property {'i'|'u'|'d'} op Insert, update or delete.
 * @property {Record<string, unknown>} p Fields (null removes one on `u`).
 * @property {number} [base_sid] The newest sid the client had seen when it made the change.
 */

/**
 * What the client needs of a queue.
 * @typedef {object} Queue
 * @property {'indexeddb'|'memory'} kind Where it is kept.
 * @property {string} name
 * @property {() => Promise<QueuedMutation[]>} load Every entry, in `seq` order.
 * @property {(entry: QueuedMutation) => Promise<void>} add
 * @property {(txIds: Iterable<string>) => Promise<void>} remove
 * @property {() => Promise<void>} clear
 * @property {(listener: () => void) => () => void} onExternalChange Another tab changed it.
 * @property {() => void} close
 */

/** @implements {Queue} */
export class MemoryQueue {
  /** @param {string} name */
  constructor (name) {
    this.kind = /** @type {const} */ ('memory')
    this.name = name
    /** @type {Map<string, QueuedMutation>} */
    this.entries = new Map()
  }

  async load () {
    return sortBySeq([...this.entries.values()].map(clone))
  }

  /** @param {QueuedMutation} entry */
  async add (entry) {
    this.entries.set(entry.client_tx_id, clone(entry))
  }

  /** @param {Iterable<string>} txIds */
  async remove (txIds) {
    for (const tx of txIds) this.entries.delete(tx)
  }

  async clear () {
    this.entries.clear()
  }

  /** @param {() => void} _listener */
  onExternalChange (_listener) {
    return () => {}
  }

  close () {}
}

const STORE = 'mutations'

/** @implements {Queue} */
export class IndexedDbQueue {
  /**
   * @param {string} name
   * @param {IDBDatabase} db
   * @param {typeof BroadcastChannel | undefined} Channel
   */
  constructor (name, db, Channel) {
    this.kind = /** @type {const} */ ('indexeddb')
    this.name = name
    this.db = db
    /** @type {Set<() => void>} */
    this.listeners = new Set()
    this.channel = Channel ? new Channel(name) : null
    if (this.channel) {
      this.channel.onmessage = () => { for (const listener of this.listeners) listener() }
    }
  }

  async load () {
    const rows = await this._run('readonly', (store) => store.getAll())
    return sortBySeq(/** @type {QueuedMutation[]} */ (rows))
  }

  /** @param {QueuedMutation} entry */
  async add (entry) {
    await this._run('readwrite', (store) => store.put(clone(entry)))
    this._changed()
  }

  /** @param {Iterable<string>} txIds */
  async remove (txIds) {
    const ids = [...txIds]
    if (!ids.length) return
    await this._run('readwrite', (store) => { for (const id of ids) store.delete(id) })
    this._changed()
  }

  async clear () {
    await this._run('readwrite', (store) => store.clear())
    this._changed()
  }

  /** @param {() => void} listener */
  onExternalChange (listener) {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  close () {
    if (this.channel) this.channel.close()
    this.db.close()
  }

  _changed () {
    if (this.channel) this.channel.postMessage('changed')
  }

  /**
   * One transaction on the store; resolves with the request's result once committed.
   * @param {IDBTransactionMode} mode
   * @param {(store: IDBObjectStore) => IDBRequest | void} work
   * @returns {Promise<unknown>}
   */
  _run (mode, work) {
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction(STORE, mode)
      const request = work(tx.objectStore(STORE))
      tx.oncomplete = () => resolve(request ? request.result : undefined)
      tx.onerror = () => reject(tx.error)
      tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'))
    })
  }
}

/**
 * Open the queue `name`: IndexedDB if `indexedDB` is given (or global) and opens,
 * memory otherwise. Never rejects: a broken IndexedDB falls back to memory.
 * @param {string} name The database name (one per queue).
 * @param {{indexedDB?: IDBFactory | null, BroadcastChannel?: typeof BroadcastChannel, onError?: (error: unknown) => void}} [options]
 *   `indexedDB: null` forces memory.
 * @returns {Promise<Queue>}
 */
export async function openQueue (name, options = {}) {
  const factory = options.indexedDB !== undefined ? options.indexedDB : globalThis.indexedDB
  if (!factory) return new MemoryQueue(name)
  try {
    const db = await openDatabase(factory, name)
    const Channel = options.BroadcastChannel || globalThis.BroadcastChannel
    return new IndexedDbQueue(name, db, Channel)
  } catch (error) {
    if (options.onError) options.onError(error)
    return new MemoryQueue(name)
  }
}

/**
 * @param {IDBFactory} factory
 * @param {string} name
 * @returns {Promise<IDBDatabase>}
 */
function openDatabase (factory, name) {
  return new Promise((resolve, reject) => {
    const request = factory.open(name, 1)
    request.onupgradeneeded = () => {
      request.result.createObjectStore(STORE, { keyPath: 'client_tx_id' })
    }
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
    request.onblocked = () => reject(new Error(`IndexedDB ${name} is blocked by another tab`))
  })
}

/** @template {{seq: number}} T @param {T[]} list @returns {T[]} */
function sortBySeq (list) {
  return list.sort((a, b) => a.seq - b.seq)
}

/** @param {QueuedMutation} entry @returns {QueuedMutation} */
function clone (entry) {
  return JSON.parse(JSON.stringify(entry))
}
