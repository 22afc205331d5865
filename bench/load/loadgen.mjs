// y-websocket load generator for bench/compare.py (loopback only; every phase bounded).
//
//   node bench/load/loadgen.mjs '<json config>'
//
// Speaks the y-websocket binary protocol over raw `ws` sockets. Every client sends sync
// step 1 on connect and answers the server's step 1 with step 2; receivers keep no Y.Doc
// (their step 2 is the empty doc's) and only scan relayed update bytes for the marker
// "~M<step>.<writer>.<seq>.<sent µs>~" that writers embed in genuine Yjs text inserts
// (made with the `yjs` package). Server CPU and RSS are read from /proc for the pids given.
// Prints JSON lines: {"log": ...} while running, then one {"result": ...} (or {"error": ...}).
//
// Modes: fanout (rooms x clients, one writer per room, a list of rate steps),
//        idle (RSS per idle connection), docs (RSS per loaded ~20 KB doc, then after unload),
//        fill (one writer logs N updates), open (time from connect to the full doc).

import { readFileSync } from 'node:fs'
import http from 'node:http'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'

const cfg = JSON.parse(process.argv[2] || '{}')
const PIDS = cfg.pids || []
const CLK_TCK = cfg.clk_tck || 100
const BASE = cfg.base // ws://127.0.0.1:PORT or ws://127.0.0.1:PORT/yjs
const CONNECT_CONCURRENCY = cfg.connect_concurrency || 64
const CONNECT_TIMEOUT_MS = (cfg.connect_timeout_s || 20) * 1000
// Browsers offer permessage-deflate; off by default so that framing cost is comparable.
const DEFLATE = cfg.deflate === true
let negotiated = null // the extensions of the first connection

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const log = (msg) => emit({ log: msg })
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const nowUs = () => Math.round(performance.now() * 1000)

// Hard stop: whatever happens, this process ends within the given time.
const hardDeadline = setTimeout(() => {
  emit({ error: `loadgen deadline of ${cfg.deadline_s} s reached` })
  process.exit(3)
}, (cfg.deadline_s || 600) * 1000)
hardDeadline.unref()

// -- /proc figures for the server process tree ------------------------------------------

function serverCpuSeconds () {
  let ticks = 0
  for (const pid of PIDS) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      ticks += Number(fields[11]) + Number(fields[12])
    } catch { /* process gone */ }
  }
  return ticks / CLK_TCK
}

function serverRssKiB () {
  let kib = 0
  for (const pid of PIDS) {
    try {
      const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
      if (m) kib += Number(m[1])
    } catch { /* process gone */ }
  }
  return kib
}

async function settledRss (settleMs) {
  await sleep(settleMs)
  const samples = []
  for (let i = 0; i < 3; i++) {
    samples.push(serverRssKiB())
    await sleep(300)
  }
  samples.sort((a, b) => a - b)
  return samples[1]
}

function genCpu () {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

// -- protocol ----------------------------------------------------------------------------

const MSG_SYNC = 0
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2
const EMPTY_STEP1 = Buffer.from([MSG_SYNC, STEP1, 1, 0]) // state vector of an empty doc
const EMPTY_STEP2 = Buffer.from([MSG_SYNC, STEP2, 2, 0, 0]) // update of an empty doc
const MARK = Buffer.from('~M')
const END = Buffer.from('~END~')

function encodeSync (write) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_SYNC)
  write(encoder)
  return encoding.toUint8Array(encoder)
}

// Calls onMarker(step, writer, seq, sentUs) for every "~M<a>.<b>.<c>.<d>~" in buf.
function scanMarkers (buf, onMarker) {
  let i = buf.indexOf(MARK)
  while (i !== -1) {
    let j = i + 2
    let k = 0
    const v = [0, 0, 0, 0]
    for (; j < buf.length; j++) {
      const c = buf[j]
      if (c === 0x7e) break
      if (c === 0x2e) {
        if (++k > 3) break
      } else if (c >= 48 && c <= 57) {
        v[k] = v[k] * 10 + (c - 48)
      } else {
        k = -1
        break
      }
    }
    if (k === 3 && buf[j] === 0x7e) onMarker(v[0], v[1], v[2], v[3])
    i = buf.indexOf(MARK, j)
  }
}

const closeCodes = {}
let unexpectedCloses = 0
let closing = false

// One y-websocket connection. Receivers: no Y.Doc. Writers: a Y.Doc whose local changes are
// sent as update messages.
class Client {
  constructor (room, { writer = false, onUpdate = null, onStep2 = null } = {}) {
    this.room = room
    this.writer = writer
    this.onUpdate = onUpdate
    this.onStep2 = onStep2
    this.open = false
    this.synced = false
    this.waiters = [] // resolved on the next step 2
    if (writer) {
      this.doc = new Y.Doc()
      this.text = this.doc.getText('t')
      this.doc.on('update', (update, origin) => {
        if (origin === 'local' && this.open) {
          this.ws.send(encodeSync((e) => syncProtocol.writeUpdate(e, update)))
        }
      })
    }
  }

  connect () {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`connect/sync timeout for ${this.room}`))
        try { this.ws.terminate() } catch { }
      }, CONNECT_TIMEOUT_MS)
      this.waiters.push(() => { clearTimeout(timer); resolve(this) })
      const ws = new WebSocket(`${BASE}/${this.room}`, {
        perMessageDeflate: DEFLATE,
        maxPayload: 512 * 1024 * 1024
      })
      this.ws = ws
      ws.on('open', () => {
        this.open = true
        if (negotiated === null) negotiated = ws.extensions || ''
        ws.send(this.step1())
      })
      ws.on('message', (data) => this.onMessage(data))
      ws.on('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
      ws.on('close', (code) => {
        const wasOpen = this.open
        this.open = false
        if (!closing && wasOpen) {
          unexpectedCloses++
          closeCodes[code] = (closeCodes[code] || 0) + 1
        }
        clearTimeout(timer)
        reject(new Error(`closed ${code} before sync`))
      })
    })
  }

  step1 () {
    if (!this.writer) return EMPTY_STEP1
    return encodeSync((e) => syncProtocol.writeSyncStep1(e, this.doc))
  }

  onMessage (data) {
    if (data[0] !== MSG_SYNC) return // awareness and anything else: ignored
    const kind = data[1]
    if (kind === UPDATE) {
      if (this.onUpdate !== null) this.onUpdate(this, data)
    } else if (kind === STEP1) {
      if (!this.writer) {
        this.ws.send(EMPTY_STEP2)
      } else {
        const decoder = decoding.createDecoder(data)
        decoding.readVarUint(decoder)
        decoding.readVarUint(decoder)
        const sv = decoding.readVarUint8Array(decoder)
        this.ws.send(encodeSync((e) => syncProtocol.writeSyncStep2(e, this.doc, sv)))
      }
    } else if (kind === STEP2) {
      this.synced = true
      if (this.onStep2 !== null) this.onStep2(this, data)
      const waiters = this.waiters
      this.waiters = []
      for (const w of waiters) w()
    }
  }

  // Resolves once every message sent before has been handled by the server: it answers
  // this step 1 with a step 2 after processing what came before on this connection.
  flush (timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('flush timeout')), timeoutMs)
      this.waiters.push(() => { clearTimeout(timer); resolve() })
      this.ws.send(this.step1())
    })
  }

  insert (str) {
    this.doc.transact(() => this.text.insert(this.text.length, str), 'local')
  }

  close () {
    try { this.ws.close(1000) } catch { }
  }
}

// Connect (and sync) clients with bounded concurrency; returns the ones that made it.
async function connectAll (clients, label) {
  const started = performance.now()
  let next = 0
  let failed = 0
  let firstError = null
  const ok = []
  async function worker () {
    while (next < clients.length) {
      const c = clients[next++]
      try {
        ok.push(await c.connect())
      } catch (err) {
        failed++
        if (firstError === null) firstError = String(err && err.message ? err.message : err)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, clients.length) }, worker))
  const seconds = (performance.now() - started) / 1000
  log(`${label}: ${ok.length}/${clients.length} connected+synced in ${seconds.toFixed(1)} s` +
    (failed ? ` (${failed} failed: ${firstError})` : ''))
  return { ok, failed, seconds, firstError }
}

async function closeAll (clients, waitMs = 3000) {
  closing = true
  for (const c of clients) c.close()
  const deadline = performance.now() + waitMs
  while (performance.now() < deadline && clients.some((c) => c.ws && c.ws.readyState !== 3)) {
    await sleep(50)
  }
  for (const c of clients) {
    if (c.ws && c.ws.readyState !== 3) c.ws.terminate()
  }
  closing = false
}

function percentiles (values) {
  if (values.length === 0) return { p50_ms: null, p99_ms: null, max_ms: null, mean_ms: null }
  const a = Float64Array.from(values).sort()
  const at = (q) => a[Math.min(a.length - 1, Math.floor(q * a.length))] / 1000
  let sum = 0
  for (const v of a) sum += v
  return { p50_ms: at(0.5), p99_ms: at(0.99), max_ms: a[a.length - 1] / 1000, mean_ms: sum / a.length / 1000 }
}

// Per second of the step (by arrival time): [second, deliveries, p50 ms, p99 ms, max ms].
function timeline (st) {
  const buckets = []
  for (let i = 0; i < st.lat.length; i++) {
    const sec = Math.floor(st.at[i] / 1e6)
    if (sec < 0 || sec > 600) continue
    if (buckets[sec] === undefined) buckets[sec] = []
    buckets[sec].push(st.lat[i])
  }
  const out = []
  for (let sec = 0; sec < buckets.length; sec++) {
    if (buckets[sec] === undefined) continue
    const p = percentiles(buckets[sec])
    out.push([sec, buckets[sec].length, round2(p.p50_ms), round2(p.p99_ms), round2(p.max_ms)])
  }
  return out
}

const round2 = (v) => v === null ? null : Math.round(v * 100) / 100

// -- fanout: rooms x clients, one writer per room, rate steps ---------------------------

async function fanout () {
  const { rooms, clients: perRoom } = cfg
  const prefix = cfg.prefix || 'fan'
  const stats = [] // per step: expected, received, dup, latencies (µs)
  const latCap = 5_000_000
  const onUpdate = (client, data) => {
    scanMarkers(data, (step, writer, seq, sentUs) => {
      const st = stats[step]
      if (st === undefined) return
      const order = step * 1e9 + seq // seq restarts at 0 every step
      const last = client.lastSeq.get(writer)
      if (last !== undefined && order <= last) {
        st.dup++
        return
      }
      client.lastSeq.set(writer, order)
      st.received++
      const now = nowUs()
      if (st.lat.length < latCap) {
        st.lat.push(now - sentUs)
        st.at.push(now - st.t0Us)
      }
    })
  }
  const writers = []
  const receiversByRoom = []
  const all = []
  for (let r = 0; r < rooms; r++) {
    const room = `${prefix}-${r}`
    const w = new Client(room, { writer: true })
    w.roomIndex = r
    writers.push(w)
    all.push(w)
    const rs = []
    for (let i = 1; i < perRoom; i++) {
      const c = new Client(room, { onUpdate })
      c.lastSeq = new Map()
      rs.push(c)
      all.push(c)
    }
    receiversByRoom.push(rs)
  }
  // Receivers first, so that every receiver is in the room before its writer writes; and
  // one per room before the others (stock pycrdt-websocket 0.16 loses concurrent first
  // connections to a new room: they never get an answer).
  const firsts = receiversByRoom.map((rs) => rs[0]).filter((c) => c !== undefined)
  const rest = receiversByRoom.flatMap((rs) => rs.slice(1))
  const conn1 = await connectAll(firsts, 'first receiver of each room')
  const conn = await connectAll(rest, 'other receivers')
  conn.ok.push(...conn1.ok)
  conn.failed += conn1.failed
  conn.seconds += conn1.seconds
  conn.firstError = conn1.firstError || conn.firstError
  const connW = await connectAll(writers, 'writers')
  const liveWriters = connW.ok
  await sleep(cfg.settle_ms ?? 1000)

  // Steps run in order. With stop_on_fail, a step fails on p99 > limit, any loss or an
  // unexpected close; a failed step is run once more (a single transient must not end the
  // ladder) and a second failure stops it. Rates in always_rates that were not reached
  // are then run anyway (marked extra).
  const results = []
  const failAt = cfg.stop_on_fail || null
  const mustRates = new Set(cfg.always_rates || [])
  const ranRates = new Set()
  const queue = cfg.steps.map((s) => ({ ...s }))
  let stopped = false
  let stepIndex = 0
  while (queue.length > 0) {
    const spec = queue.shift()
    if (stopped && (!mustRates.has(spec.rate) || ranRates.has(spec.rate))) continue
    const res = await runStep(stepIndex++, spec, liveWriters, receiversByRoom, stats)
    ranRates.add(spec.rate)
    if (spec.retry) res.retry = true
    if (stopped) res.extra = true
    results.push(res)
    log(`step rate=${spec.rate}/s/writer${spec.retry ? ' (again)' : ''}: ` +
      `${res.deliveries_per_s.toFixed(0)} deliveries/s ` +
      `p50=${fmt(res.p50_ms)} p99=${fmt(res.p99_ms)} ms lost=${res.lost} ` +
      `server CPU=${res.server_cpu_pct.toFixed(0)}% gen CPU=${res.gen_cpu_pct.toFixed(0)}%`)
    if (failAt !== null && !stopped) {
      res.failed = res.lost > 0 || res.p99_ms === null || res.p99_ms > failAt.p99_ms ||
        res.unexpected_closes > 0
      if (res.failed && spec.retry) {
        stopped = true
        res.confirmed_fail = true
      } else if (res.failed) {
        queue.unshift({ ...spec, retry: true })
      }
    }
  }
  await closeAll(all)
  return {
    rooms,
    clients_per_room: perRoom,
    connect: { receivers: conn.ok.length, writers: liveWriters.length, failed: conn.failed + connW.failed, seconds: conn.seconds + connW.seconds, first_error: conn.firstError || connW.firstError },
    steps: results,
    close_codes: closeCodes
  }
}

function fmt (v) {
  return v === null ? '-' : v.toFixed(2)
}

async function runStep (stepIndex, spec, writers, receiversByRoom, stats) {
  const st = { expected: 0, received: 0, dup: 0, lat: [], at: [], t0Us: nowUs() }
  stats[stepIndex] = st
  const rate = spec.rate
  const duration = spec.duration
  const W = writers.length
  const sent = new Array(W).fill(0)
  const total = Math.floor(duration * rate + 1e-9) // per writer; the last one due within the window
  const closesBefore = unexpectedCloses
  let backlogged = 0
  const cpu0 = serverCpuSeconds()
  const g0 = genCpu()
  const t0 = performance.now()
  for (;;) {
    const elapsed = (performance.now() - t0) / 1000
    if (elapsed >= duration) break
    for (let i = 0; i < W; i++) {
      const w = writers[i]
      const due = Math.min(total, Math.floor(elapsed * rate + i / W))
      while (sent[i] < due) {
        const seq = sent[i]++
        if (!w.open) continue
        if (w.ws.bufferedAmount > 64 * 1024 * 1024) {
          backlogged++
          continue
        }
        let live = 0
        for (const c of receiversByRoom[w.roomIndex]) if (c.open) live++
        st.expected += live
        w.insert(`~M${stepIndex}.${i}.${seq}.${nowUs()}~`)
      }
    }
    await sleep(2)
  }
  for (let i = 0; i < W; i++) { // the last few due at the very end of the window
    const w = writers[i]
    while (sent[i] < total) {
      const seq = sent[i]++
      if (!w.open) continue
      let live = 0
      for (const c of receiversByRoom[w.roomIndex]) if (c.open) live++
      st.expected += live
      w.insert(`~M${stepIndex}.${i}.${seq}.${nowUs()}~`)
    }
  }
  const sendSeconds = (performance.now() - t0) / 1000
  const drainUntil = performance.now() + (spec.drain ?? 3) * 1000
  while (st.received < st.expected && performance.now() < drainUntil) await sleep(10)
  const wallSeconds = (performance.now() - t0) / 1000
  const cpu = serverCpuSeconds() - cpu0
  const gen = genCpu() - g0
  const pct = percentiles(st.lat)
  const res = {
    rate_per_writer: rate,
    writers: W,
    seconds: sendSeconds,
    updates_sent: sent.reduce((a, b) => a + b, 0),
    expected: st.expected,
    received: st.received,
    lost: st.expected - st.received,
    duplicates: st.dup,
    backlogged_sends: backlogged,
    unexpected_closes: unexpectedCloses - closesBefore,
    deliveries_per_s: st.received / sendSeconds,
    nominal_deliveries_per_s: st.expected / sendSeconds,
    ...pct,
    server_cpu_s: cpu,
    server_cpu_pct: (cpu / wallSeconds) * 100,
    server_cpu_s_per_1k_deliveries: st.received > 0 ? (cpu / st.received) * 1000 : null,
    gen_cpu_pct: (gen / wallSeconds) * 100,
    server_rss_kib: serverRssKiB()
  }
  res.timeline = timeline(st)
  st.lat = [] // free memory; late arrivals still count as received but not in this result
  st.at = []
  return res
}

// -- idle: RSS per idle connection ---------------------------------------------------------

async function idle () {
  const { rooms, n } = cfg
  const prefix = cfg.prefix || 'idle'
  const rss0 = await settledRss(500)
  const openers = Array.from({ length: rooms }, (_, r) => new Client(`${prefix}-${r}`))
  const c1 = await connectAll(openers, 'room openers')
  const rssRooms = await settledRss(cfg.settle_ms ?? 2000)
  const idlers = Array.from({ length: n }, (_, i) => new Client(`${prefix}-${i % rooms}`))
  const c2 = await connectAll(idlers, 'idle clients')
  const rssIdle = await settledRss(cfg.settle_ms ?? 2000)
  const stillOpen = idlers.filter((c) => c.open).length
  await closeAll([...openers, ...idlers])
  return {
    rooms,
    n,
    connected: c2.ok.length,
    still_open: stillOpen,
    connect_failed: c1.failed + c2.failed,
    first_error: c1.firstError || c2.firstError,
    rss_fresh_kib: rss0,
    rss_rooms_open_kib: rssRooms,
    rss_with_idle_kib: rssIdle,
    kib_per_connection: (rssIdle - rssRooms) / Math.max(1, c2.ok.length),
    close_codes: closeCodes
  }
}

// -- docs: RSS per loaded ~20 KB doc, then after the rooms are left ------------------------

function pseudoText (len, seed) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;'
  let x = seed * 2654435761 % 4294967296
  let s = ''
  for (let i = 0; i < len; i++) {
    x = (x * 1664525 + 1013904223) % 4294967296
    s += alphabet[x % alphabet.length]
  }
  return s
}

function getJson (url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => {
        try { resolve(JSON.parse(body)) } catch (e) { reject(e) }
      })
    })
    req.setTimeout(5000, () => req.destroy(new Error('healthz timeout')))
    req.on('error', reject)
  })
}

async function docs () {
  // Round 1: D writers connect to D new rooms, each writes ~kib KB (chunks inserts) and
  // stays connected while RSS is read; then all leave and RSS is read once the rooms are
  // gone (crdt-sync: /healthz rooms == 0) or after_wait_s. Round 2 repeats with D other
  // docs: RSS after it tells memory kept for reuse from memory that keeps growing.
  const { docs: count, kib, chunks } = cfg
  const prefix = cfg.prefix || 'doc'
  const rss0 = await settledRss(500)
  const rounds = []
  for (let round = 1; round <= (cfg.rounds || 1); round++) {
    rounds.push(await docsRound(`${prefix}${round}`, count, kib, chunks))
  }
  const first = rounds[0]
  const last = rounds[rounds.length - 1]
  const n = Math.max(1, first.loaded)
  return {
    docs: count,
    loaded: first.loaded,
    flush_failed: first.flush_failed,
    doc_update_bytes: first.doc_update_bytes,
    write_seconds: first.write_seconds,
    rss_fresh_kib: rss0,
    rss_rooms_connected_kib: first.rss_rooms_connected_kib,
    rss_loaded_kib: first.rss_loaded_kib,
    rss_after_leave_kib: first.rss_after_leave_kib,
    kib_per_loaded_doc: (first.rss_loaded_kib - rss0) / n,
    kib_per_doc_content: (first.rss_loaded_kib - first.rss_rooms_connected_kib) / n,
    kib_per_doc_after_leave: (first.rss_after_leave_kib - rss0) / n,
    rss_after_last_round_kib: last.rss_after_leave_kib,
    kib_per_doc_after_last_round: (last.rss_after_leave_kib - rss0) / n,
    rooms_after_leave: first.rooms_after_leave,
    unload_wait_s: first.unload_wait_s,
    rounds,
    close_codes: closeCodes
  }
}

async function docsRound (prefix, count, kib, chunks) {
  const writers = Array.from({ length: count }, (_, i) => new Client(`${prefix}-${i}`, { writer: true }))
  const c = await connectAll(writers, `${prefix} writers`)
  const rssEmpty = await settledRss(cfg.settle_ms ?? 2000)
  const chunkLen = Math.round((kib * 1024) / chunks)
  const texts = Array.from({ length: 16 }, (_, i) => pseudoText(chunkLen, i + 1))
  const started = performance.now()
  let next = 0
  let flushFailed = 0
  async function worker () {
    while (next < c.ok.length) {
      const w = c.ok[next++]
      for (let k = 0; k < chunks; k++) w.insert(texts[(k + w.room.length) % texts.length])
      try {
        await w.flush()
      } catch {
        flushFailed++
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(32, c.ok.length) }, worker))
  const writeSeconds = (performance.now() - started) / 1000
  log(`${prefix}: wrote ${c.ok.length} docs of ${kib} KB in ${writeSeconds.toFixed(1)} s`)
  const rssLoaded = await settledRss(cfg.settle_ms ?? 2000)
  const docBytes = c.ok.length ? Y.encodeStateAsUpdate(c.ok[0].doc).length : 0
  await closeAll(writers)
  const leftAt = performance.now()
  let roomsLeft = null
  if (cfg.healthz) {
    const until = performance.now() + (cfg.unload_max_s ?? 60) * 1000
    while (performance.now() < until) {
      try {
        roomsLeft = (await getJson(cfg.healthz)).rooms
      } catch { roomsLeft = null }
      if (roomsLeft === 0) break
      await sleep(250)
    }
  }
  const unloadSeconds = (performance.now() - leftAt) / 1000
  const rssAfter = await settledRss((cfg.after_wait_s ?? 3) * 1000)
  log(`${prefix}: RSS connected ${rssEmpty} KiB, loaded ${rssLoaded} KiB, after leaving ${rssAfter} KiB`)
  return {
    loaded: c.ok.length,
    flush_failed: flushFailed,
    doc_update_bytes: docBytes,
    write_seconds: writeSeconds,
    rss_rooms_connected_kib: rssEmpty,
    rss_loaded_kib: rssLoaded,
    rss_after_leave_kib: rssAfter,
    rooms_after_leave: roomsLeft,
    unload_wait_s: unloadSeconds
  }
}

// -- fill / open: a doc with N logged updates, and its cold open --------------------------

async function fill () {
  const w = new Client(cfg.room, { writer: true })
  await w.connect()
  const started = performance.now()
  const every = cfg.flush_every || 500
  for (let i = 0; i < cfg.updates; i++) {
    w.insert(`u${i} `)
    if ((i + 1) % every === 0) await w.flush()
  }
  w.insert('~END~')
  await w.flush()
  const seconds = (performance.now() - started) / 1000
  const bytes = Y.encodeStateAsUpdate(w.doc).length
  await closeAll([w])
  return { updates: cfg.updates + 1, seconds, doc_update_bytes: bytes }
}

async function open () {
  // Time from starting the WebSocket handshake until the doc's content (its last insert,
  // "~END~") has arrived, in step 2 or in updates after it (a server may answer step 1
  // before its store finished loading and send the stored state later).
  const t0 = performance.now()
  let step2Ms = null
  let contentMs = null
  let bytes = 0
  let done
  const got = new Promise((resolve) => { done = resolve })
  const seen = (data) => {
    bytes += data.length
    if (contentMs === null && data.indexOf(END) !== -1) {
      contentMs = performance.now() - t0
      done()
    }
  }
  const c = new Client(cfg.room, {
    onUpdate: (_c, data) => seen(data),
    onStep2: (_c, data) => {
      if (step2Ms === null) step2Ms = performance.now() - t0
      seen(data)
    }
  })
  let error = null
  try {
    await c.connect()
    await Promise.race([got, sleep((cfg.timeout_s || 60) * 1000)])
  } catch (err) {
    error = String(err.message || err)
  }
  await closeAll([c])
  return { step2_ms: step2Ms, content_ms: contentMs, bytes, error }
}

// -------------------------------------------------------------------------------------------

const modes = { fanout, idle, docs, fill, open }

try {
  if (!(cfg.mode in modes)) throw new Error(`unknown mode ${cfg.mode}`)
  const g0 = genCpu()
  const t0 = performance.now()
  const result = await modes[cfg.mode]()
  result.extensions = negotiated
  result.gen_cpu_s = genCpu() - g0
  result.gen_wall_s = (performance.now() - t0) / 1000
  emit({ result })
  process.exit(0)
} catch (err) {
  emit({ error: String(err && err.stack ? err.stack : err) })
  process.exit(2)
}
