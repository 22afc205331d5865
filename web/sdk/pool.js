// The local pool: the records the server confirmed (bootstrap + frames applied in sid
// order, each once) with this client's own unacknowledged changes on top. Pure: no
// I/O, no timers, so it is tested on its own (test/pool.test.mjs).

/**
 * A SyncFrame, as the feed sends it.
 * @typedef {object} Frame
 * @property {number} sid Store-assigned, strictly increasing across all records.
 * @property {string} t Record type.
 * @property {string} id Record id.
 * @property {'i'|'u'|'d'} op Insert (whole record), update (changed fields; null = removed), delete.
 * @property {Record<string, unknown>} [p] Fields.
 * @property {string} [who] Actor.
 * @property {number} [at] Epoch ms.
 * @property {{client_tx_id?: string, client_id?: string}} [ctx]
 */

/**
 * A record as the pool shows it.
 * @typedef {object} PoolRecord
 * @property {string} t
 * @property {string} id
 * @property {Record<string, unknown>} fields Current fields (confirmed, then local changes on top).
 * @property {number | null} sid The newest confirmed sid of the record (null: only local so far).
 * @property {null | 'i' | 'u'} pending The op of the newest local change not yet acknowledged.
 */

/** @typedef {import('./offline-queue.js').QueuedMutation} QueuedMutation */

/** @param {string} t @param {string} id */
export const keyOf = (t, id) => `${t}\u0000${id}`

/**
 * `u` semantics: set every field of `p`, remove those that are null. Returns `fields`.
 * @param {Record<string, unknown>} fields
 * @param {Record<string, unknown> | undefined | null} p
 */
export function merge (fields, p) {
  for (const [key, value] of Object.entries(p || {})) {
    if (value === null) delete fields[key]
    else fields[key] = value
  }
  return fields
}

export class Pool {
  /** @param {string[] | null} types Record types kept (null: every type). */
  constructor (types = null) {
    this.types = types ? new Set(types) : null
    /** What the app shows: t -> id -> record. Stable Map objects, updated in place.
     * @type {Map<string, Map<string, PoolRecord>>} */
    this.records = new Map()
    /** What the server confirmed: t -> id -> {t, id, fields, sid}.
     * @type {Map<string, Map<string, {t: string, id: string, fields: Record<string, unknown>, sid: number}>>} */
    this.confirmed = new Map()
    /** key -> newest sid applied to that record (kept after a delete: older frames stay ignored). */
    this.recordSids = new Map()
    /** The newest sid seen: the `since` of the next reconnect. */
    this.lastSid = 0
    /** Local changes not yet acknowledged, oldest first (the offline queue's entries).
     * @type {QueuedMutation[]} */
    this.queued = []
    /** Acknowledged changes whose frame has not arrived yet: still shown.
     * @type {{mutation: QueuedMutation, sid: number}[]} */
    this.awaiting = []
  }

  /** @param {string} t */
  wants (t) {
    return this.types === null || this.types.has(t)
  }

  /**
   * Replace the confirmed state (a bootstrap from `/sync/v1/records`).
   * @param {{t: string, id: string, fields: Record<string, unknown>, sid: number}[]} records
   * @param {number} sid Where the feed continues from.
   * @returns {Set<string>} the keys that changed
   */
  reset (records, sid) {
    const keys = new Set(this._allKeys())
    this.confirmed.clear()
    this.recordSids.clear()
    for (const r of records) {
      if (!this.wants(r.t)) continue
      mapOf(this.confirmed, r.t).set(r.id, { t: r.t, id: r.id, fields: { ...r.fields }, sid: r.sid })
      this.recordSids.set(keyOf(r.t, r.id), r.sid)
      keys.add(keyOf(r.t, r.id))
    }
    this.lastSid = sid
    this.settle()
    this.rebuild(keys)
    return keys
  }

  /** Forget everything but the local changes (a new token: another grant, maybe another tenant). */
  clear () {
    const keys = new Set(this._allKeys())
    this.confirmed.clear()
    this.recordSids.clear()
    this.awaiting = []
    this.lastSid = 0
    this.rebuild(keys)
    return keys
  }

  /**
   * Apply frames from the feed or the delta. Frames at or below `lastSid` were
   * applied already and are dropped: each frame is accepted once, in sid order.
   * @param {Frame[]} frames
   * @returns {{accepted: Frame[], keys: Set<string>}}
   */
  apply (frames) {
    /** @type {Frame[]} */
    const accepted = []
    const keys = new Set()
    const sorted = frames.filter(isFrame).sort((a, b) => a.sid - b.sid)
    for (const frame of sorted) {
      if (frame.sid <= this.lastSid) continue
      this.lastSid = frame.sid
      if (!this.wants(frame.t)) continue
      accepted.push(frame)
      const key = keyOf(frame.t, frame.id)
      if (frame.sid <= (this.recordSids.get(key) ?? -1)) continue // the bootstrap had it
      this.recordSids.set(key, frame.sid)
      keys.add(key)
      const byId = mapOf(this.confirmed, frame.t)
      const p = frame.p && typeof frame.p === 'object' ? frame.p : {}
      if (frame.op === 'd') {
        byId.delete(frame.id)
      } else if (frame.op === 'i') {
        byId.set(frame.id, { t: frame.t, id: frame.id, fields: merge({}, p), sid: frame.sid })
      } else if (frame.op === 'u') {
        const record = byId.get(frame.id) || { t: frame.t, id: frame.id, fields: {}, sid: frame.sid }
        merge(record.fields, p)
        record.sid = frame.sid
        byId.set(frame.id, record)
      }
    }
    for (const key of this.settle()) keys.add(key)
    this.rebuild(keys)
    return { accepted, keys }
  }

  /**
   * A local change (already in the queue): shown at once.
   * @param {QueuedMutation} mutation
   */
  enqueue (mutation) {
    this.queued.push(mutation)
    return this.rebuild([keyOf(mutation.t, mutation.id)])
  }

  /**
   * Replace the local changes (the queue was loaded, or another tab changed it).
   * @param {QueuedMutation[]} list
   */
  setQueued (list) {
    const keys = new Set(this.queued.map((m) => keyOf(m.t, m.id)))
    this.queued = list.slice()
    for (const m of list) keys.add(keyOf(m.t, m.id))
    this.rebuild(keys)
    return keys
  }

  /**
   * The server answered a queued change: it leaves the queue; if applied (`sid`), it
   * is still shown until its frame (or a newer state of the record) arrives.
   * @param {string} txId
   * @param {number | null | undefined} sid null: refused (the change is undone locally).
   */
  acknowledge (txId, sid) {
    const index = this.queued.findIndex((m) => m.client_tx_id === txId)
    if (index < 0) return new Set()
    const [mutation] = this.queued.splice(index, 1)
    if (typeof sid === 'number') this.awaiting.push({ mutation, sid })
    const keys = new Set([keyOf(mutation.t, mutation.id)])
    this.settle()
    this.rebuild(keys)
    return keys
  }

  /** Drop acknowledged changes the confirmed state now holds; returns their keys. */
  settle () {
    const keys = new Set()
    this.awaiting = this.awaiting.filter(({ mutation, sid }) => {
      const key = keyOf(mutation.t, mutation.id)
      const keep = sid > this.lastSid && sid > (this.recordSids.get(key) ?? -1)
      if (!keep) keys.add(key)
      return keep
    })
    return keys
  }

  /**
   * The confirmed record, without local changes (or undefined).
   * @param {string} t @param {string} id
   */
  confirmedRecord (t, id) {
    return this.confirmed.get(t)?.get(id)
  }

  /**
   * Recompute what the app sees of `keys`: the confirmed record, then the acknowledged
   * changes still awaited, then the queued ones, in order.
   * @param {Iterable<string>} keys
   * @returns {Set<string>}
   */
  rebuild (keys) {
    const done = new Set()
    for (const key of keys) {
      if (done.has(key)) continue
      done.add(key)
      const [t, id] = key.split('\u0000')
      const base = this.confirmed.get(t)?.get(id)
      /** @type {PoolRecord | null} */
      let record = base ? { t, id, fields: { ...base.fields }, sid: base.sid, pending: null } : null
      const overlay = [
        ...this.awaiting.map(({ mutation }) => ({ mutation, queued: false })),
        ...this.queued.map((mutation) => ({ mutation, queued: true }))
      ]
      for (const { mutation, queued } of overlay) {
        if (mutation.t !== t || mutation.id !== id) continue
        if (mutation.op === 'd') {
          record = null
          continue
        }
        if (!record) {
          if (mutation.op !== 'i') continue
          record = { t, id, fields: {}, sid: base ? base.sid : null, pending: null }
        }
        merge(record.fields, mutation.p)
        if (queued) record.pending = mutation.op
      }
      const byId = this.records.get(t)
      if (record) {
        mapOf(this.records, t).set(id, record)
      } else if (byId) {
        byId.delete(id)
        if (byId.size === 0) this.records.delete(t)
      }
    }
    return done
  }

  /** The pool as plain data: `{t: {id: fields}}` (for comparisons and logs). */
  snapshot () {
    /** @type {Record<string, Record<string, Record<string, unknown>>>} */
    const out = {}
    for (const [t, byId] of this.records) {
      out[t] = {}
      for (const [id, record] of byId) out[t][id] = { ...record.fields }
    }
    return out
  }

  * _allKeys () {
    for (const map of [this.records, this.confirmed]) {
      for (const [t, byId] of map) for (const id of byId.keys()) yield keyOf(t, id)
    }
  }
}

/**
 * @template V
 * @param {Map<string, Map<string, V>>} map
 * @param {string} t
 * @returns {Map<string, V>}
 */
function mapOf (map, t) {
  let byId = map.get(t)
  if (!byId) {
    byId = new Map()
    map.set(t, byId)
  }
  return byId
}

/** @param {any} frame @returns {frame is Frame} */
function isFrame (frame) {
  return Boolean(frame) && typeof frame.sid === 'number' && typeof frame.t === 'string' &&
    typeof frame.id === 'string' && ['i', 'u', 'd'].includes(frame.op)
}
