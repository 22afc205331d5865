// The inspector: polls GET /admin/inspect every second (admin token when auth is
// on) and shows this node's rooms, its newest frames, the store's figures and small
// live charts of what changes. Plain DOM and SVG, no library, no other host.

import { authHeaders, bindTokenForm, onTokenChange } from './auth.js'

const POLL_MS = 1000
const SAMPLES = 120 // two minutes of points per chart
const ENDPOINT = '../admin/inspect'

const $ = (selector) => document.querySelector(selector)
const tokenForm = bindTokenForm()

/** The charts: a label, how to read a value from two successive answers, a unit. */
const CHARTS = [
  { key: 'connections', label: 'Connections', unit: '', value: (now) => now.node_totals.connections },
  { key: 'rooms', label: 'Rooms loaded', unit: '', value: (now) => now.node_totals.rooms },
  { key: 'frames', label: 'Frames / s', unit: '/s', value: (now, before, dt) => before ? Math.max(0, now.newest_sid - before.newest_sid) / dt : null },
  { key: 'commits', label: 'Commits / s', unit: '/s', value: (now, before, dt) => before ? Math.max(0, now.store.commits - before.store.commits) / dt : null },
  { key: 'latency', label: 'Commit latency', unit: ' ms', value: (now, before) => commitLatency(now, before) },
  { key: 'queued', label: 'Store queue', unit: '', value: (now) => now.store.queued }
]

const series = new Map(CHARTS.map((chart) => [chart.key, []]))
let previous = null
let timer = null

function commitLatency (now, before) {
  if (!before) return now.store.mean_commit_ms
  const commits = now.store.commits - before.store.commits
  if (commits <= 0) return 0
  return ((now.store.commit_seconds_sum - before.store.commit_seconds_sum) / commits) * 1000
}

function setStatus (state, text) {
  const status = $('#status')
  status.dataset.state = state
  $('#status-text').textContent = text
}

function formatNumber (value, unit = '') {
  if (value === null || value === undefined || Number.isNaN(value)) return '—'
  const rounded = Math.abs(value) >= 100 ? Math.round(value) : Math.round(value * 100) / 100
  return `${rounded.toLocaleString()}${unit}`
}

function formatBytes (n) {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`
  return `${(n / 1024 / 1024).toFixed(1)} MB`
}

function cell (row, text, className) {
  const td = document.createElement('td')
  td.textContent = text
  if (className) td.className = className
  row.append(td)
  return td
}

function renderRooms (answer) {
  const body = $('#rooms tbody')
  const rows = answer.rooms.map((room) => {
    const tr = document.createElement('tr')
    tr.dataset.room = room.name
    const link = document.createElement('a')
    link.href = `./?doc=${encodeURIComponent(room.name)}`
    link.textContent = room.name
    cell(tr, '').append(link)
    cell(tr, String(room.connections), 'num')
    cell(tr, String(room.awareness), 'num')
    cell(tr, formatBytes(room.size), 'num')
    return tr
  })
  body.replaceChildren(...rows)
  $('#rooms-empty').hidden = rows.length > 0
  const more = answer.rooms_total > answer.rooms.length ? ` (of ${answer.rooms_total})` : ''
  $('#rooms-count').textContent = `${answer.rooms.length}${more} in org ${answer.org}`
}

function renderFrames (answer) {
  const body = $('#frames tbody')
  const rows = answer.frames.map((frame) => {
    const tr = document.createElement('tr')
    cell(tr, String(frame.sid), 'num')
    cell(tr, `${frame.t}/${frame.id}`)
    cell(tr, frame.op, `op op-${frame.op}`)
    cell(tr, JSON.stringify(frame.p), 'fields')
    cell(tr, frame.who ?? '—')
    cell(tr, new Date(frame.at).toLocaleTimeString())
    return tr
  })
  body.replaceChildren(...rows)
  $('#frames-empty').hidden = rows.length > 0
  $('#frames-sid').textContent = `newest sid ${answer.newest_sid}`
}

function renderStore (answer) {
  const store = answer.store
  const facts = [
    ['Status', store.ok ? 'writing' : `failing: ${store.problem}`],
    ['Commits', formatNumber(store.commits)],
    ['Last commit', formatNumber(store.last_commit_ms, ' ms')],
    ['Mean commit', formatNumber(store.mean_commit_ms, ' ms')],
    ['p99 commit ≤', formatNumber(store.p99_commit_ms, ' ms')],
    ['Queued writes', `${formatNumber(store.queued)} (${formatBytes(store.queued_bytes)})`],
    ['Last batch', `${formatNumber(store.last_batch_size)} writes`],
    ['Failed batches', formatNumber(store.failed_batches)],
    ['Frame subscribers', formatNumber(answer.node_totals.frame_subscribers)]
  ]
  const list = $('#store')
  list.dataset.ok = String(store.ok)
  list.replaceChildren(...facts.flatMap(([name, value]) => {
    const dt = document.createElement('dt')
    dt.textContent = name
    const dd = document.createElement('dd')
    dd.textContent = value
    return [dt, dd]
  }))
}

const SVG = 'http://www.w3.org/2000/svg'

function buildCharts () {
  const grid = $('#charts')
  for (const chart of CHARTS) {
    const figure = document.createElement('figure')
    figure.className = 'chart'
    figure.dataset.chart = chart.key
    const caption = document.createElement('figcaption')
    const label = document.createElement('span')
    label.textContent = chart.label
    const value = document.createElement('strong')
    value.className = 'value'
    value.textContent = '—'
    caption.append(label, value)
    const svg = document.createElementNS(SVG, 'svg')
    svg.setAttribute('viewBox', `0 0 ${SAMPLES} 40`)
    svg.setAttribute('preserveAspectRatio', 'none')
    svg.setAttribute('role', 'img')
    svg.setAttribute('aria-label', `${chart.label} over the last two minutes`)
    const area = document.createElementNS(SVG, 'path')
    area.setAttribute('class', 'area')
    const line = document.createElementNS(SVG, 'path')
    line.setAttribute('class', 'line')
    svg.append(area, line)
    figure.append(caption, svg)
    grid.append(figure)
  }
}

function renderCharts () {
  for (const chart of CHARTS) {
    const points = series.get(chart.key)
    const figure = document.querySelector(`[data-chart="${chart.key}"]`)
    const last = points.length ? points[points.length - 1] : null
    figure.querySelector('.value').textContent = formatNumber(last, chart.unit)
    const top = Math.max(1, ...points.filter((p) => p !== null))
    const offset = SAMPLES - points.length
    let d = ''
    points.forEach((p, i) => {
      if (p === null) return
      const x = offset + i
      const y = 38 - (p / top) * 34
      d += `${d ? 'L' : 'M'}${x},${y.toFixed(2)}`
    })
    figure.querySelector('.line').setAttribute('d', d)
    figure.querySelector('.area').setAttribute('d', d ? `${d}L${SAMPLES},40L${offset},40Z` : '')
  }
}

function record (answer) {
  const dt = previous ? Math.max(0.001, (answer.at - previous.at) / 1000) : 1
  for (const chart of CHARTS) {
    const points = series.get(chart.key)
    points.push(chart.value(answer, previous, dt))
    if (points.length > SAMPLES) points.shift()
  }
  previous = answer
}

async function poll () {
  try {
    const response = await fetch(ENDPOINT, { headers: authHeaders(), cache: 'no-store' })
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}))
      setStatus('refused', response.status === 401 ? 'Admin token needed' : 'Not an admin token')
      tokenForm.needed(body.detail || 'An admin token is needed')
      return
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}))
      setStatus('degraded', `Server answered ${response.status}${body.error ? `: ${body.error}` : ''}`)
      return
    }
    const answer = await response.json()
    record(answer)
    $('#node').textContent = `node ${answer.node}`
    renderRooms(answer)
    renderFrames(answer)
    renderStore(answer)
    renderCharts()
    setStatus('live', `Live · ${new Date(answer.at).toLocaleTimeString()}`)
  } catch (_) {
    setStatus('offline', 'Offline: the server does not answer')
  }
}

async function loop () {
  await poll()
  timer = setTimeout(loop, POLL_MS)
}

buildCharts()
onTokenChange(() => {
  previous = null
  for (const points of series.values()) points.length = 0
  clearTimeout(timer)
  loop()
})
loop()
