// The live record board: the records of one type as cards in columns by their
// `status` field, kept current by the SyncFrame feed. No CRDT code: the sync loop is
// the SDK's (/web/sdk/index.js: bootstrap over `/sync/v1/records`, frames over the
// WebSocket or SSE, optimistic changes as HTTP mutations kept in an offline queue in
// IndexedDB and replayed exactly once, reconnect with jittered backoff, heartbeat).
// This file is the page: columns, cards, notices, presence, forms, keyboard.
// Who is viewing each card: the board `watch`es the records whose cards are on
// screen (an IntersectionObserver), at most `watchBudget` at once (the server allows
// --max-views-per-connection per connection and closes 4461 past it), and `view`s
// the one card that is open, so it appears in that record's presence itself.
// The access token (auth.js) is handed to the SDK, which sends it on every request
// (Bearer on HTTP, ?token= on the frame socket).

import { createFrameClient } from './sdk/index.js'
import { bindTokenForm, getToken, onTokenChange } from './auth.js'

const COLUMNS = ['open', 'doing', 'done']
const OTHER = 'other'
const DEFAULT_TYPE = 'task'
const TOAST_MS = 8000
const USER_KEY = 'crdt-sync.user' // shared with the editor: {name, color}
const CLIENT_KEY = 'crdt-sync.board.client_id' // sessionStorage: one per tab
/** The offline queue (an IndexedDB database) of one identity (org/sub of the token):
 * changes queued under one token are never sent with another's. */
const QUEUE_KEY = 'crdt-sync.board.outbox'
const HIDDEN_FIELDS = new Set(['title', 'status', 'body'])
/** Records watched at once (with the open card's view): well within the server's
 * default --max-views-per-connection (100); lowered when the server says fewer. */
const WATCH_BUDGET = 50
const WATCH_DELAY_MS = 150 // coalesce watch/leave while the page scrolls
const MAX_AVATARS = 4
const COLUMN_NAMES = { open: 'Open', doing: 'Doing', done: 'Done', other: 'Other' }

const COLORS = [
  '#e0555b', '#e8843a', '#d4a514', '#4caf50', '#26a69a',
  '#2f8fd8', '#5c6bc0', '#9c5fc9', '#d05d9e', '#7f8c8d'
]
const ADJECTIVES = ['Amber', 'Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Swift']
const ANIMALS = ['Badger', 'Crane', 'Falcon', 'Fox', 'Heron', 'Lynx', 'Otter', 'Robin']

const $ = (selector, root = document) => root.querySelector(selector)
const els = {
  typeForm: $('#type-form'),
  typeName: $('#type-name'),
  userName: $('#user-name'),
  outbox: $('#outbox'),
  outboxText: $('#outbox-text'),
  outboxRetry: $('#outbox-retry'),
  status: $('#status'),
  statusText: $('#status-text'),
  lastSid: $('#last-sid'),
  createForm: $('#create-form'),
  newId: $('#new-id'),
  newTitle: $('#new-title'),
  createError: $('#create-error'),
  toasts: $('#toasts'),
  board: $('#board'),
  columnTabs: $('#column-tabs'),
  announcer: $('#announcer')
}

// ---- small helpers -------------------------------------------------------------

const pick = (list) => list[Math.floor(Math.random() * list.length)]

/** `n` random base-36 characters (crypto.getRandomValues works outside secure contexts too). */
function randomId (n) {
  const bytes = crypto.getRandomValues(new Uint8Array(n))
  return Array.from(bytes, (b) => (b % 36).toString(36)).join('')
}

/** Same checks as the server's doc names: 1–512 characters, no control characters. */
function validName (name) {
  // eslint-disable-next-line no-control-regex
  return name.length > 0 && name.length <= 512 && !/[\u0000-\u001f\u007f-\u009f]/.test(name)
}

function readStorage (storage, key) {
  try { return storage.getItem(key) } catch (_) { return null }
}

function writeStorage (storage, key, value) {
  try {
    storage.setItem(key, value)
  } catch (_) {
    // storage disabled or full: the value lasts for this page only
  }
}

function display (value) {
  if (value === null || value === undefined) return ''
  if (typeof value === 'string') return value
  if (Array.isArray(value) && value.every((item) => item === null || typeof item !== 'object')) {
    return value.map((item) => String(item)).join(', ') // ["web", "ui"] as `web, ui`
  }
  return JSON.stringify(value)
}

const shorten = (text, max) => (text.length > max ? text.slice(0, max - 1) + '…' : text)

function el (tag, className, text) {
  const node = document.createElement(tag)
  if (className) node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

function setText (node, text) {
  if (node.textContent !== text) node.textContent = text
}

// ---- who and what this page is -------------------------------------------------

function recordType () {
  const t = (new URLSearchParams(window.location.search).get('t') || '').trim()
  return t || DEFAULT_TYPE
}

const T = recordType()
const typeError = (!validName(T) || T.includes('/') || T.length > 256)
  ? `“${shorten(T, 40)}” is not a record type (no “/”, at most 256 characters)`
  : null

function sessionClientId () {
  let id = readStorage(sessionStorage, CLIENT_KEY)
  if (!id) {
    id = 'board-' + randomId(12)
    writeStorage(sessionStorage, CLIENT_KEY, id)
  }
  return id
}

const clientId = sessionClientId()

function loadUser () {
  try {
    const stored = JSON.parse(readStorage(localStorage, USER_KEY) || 'null')
    if (stored && typeof stored.name === 'string' && stored.name.trim()) return stored
  } catch (_) {
    // unreadable: a fresh random user below
  }
  const user = { name: `${pick(ADJECTIVES)} ${pick(ANIMALS)}`, color: pick(COLORS) }
  writeStorage(localStorage, USER_KEY, JSON.stringify(user))
  return user
}

const user = loadUser()

// ---- the sync client ------------------------------------------------------------

/** The server of this page, so a path prefix in front keeps working (/prefix/web/board.html). */
const serverUrl = new URL('..', window.location.href)

let client = null
let tokenForm = { needed () {} }
let askedFor = null // the queue's last refusal the token form was shown for

/** The feed transport asked for in the page's query (`auto` unless one we know). */
function boardTransport () {
  const asked = new URLSearchParams(window.location.search).get('transport')
  return ['ws', 'sse', 'longpoll'].includes(asked) ? asked : 'auto'
}

function startClient () {
  client = createFrameClient({
    url: serverUrl,
    token: getToken(),
    types: [T],
    clientId,
    // As the editor's y-websocket does (auth.js): `?token=` on the socket.
    wsTokenIn: 'query',
    // `?transport=longpoll` (or `sse`, `ws`): where a network passes only plain HTTP.
    transport: boardTransport(),
    queueName: (identity) => `${QUEUE_KEY}:${identity}`,
    // The server wants a fresh token (4401, HTTP 401): ask the person; the client
    // stops until the token form gives one (onTokenChange below).
    getToken: ({ reason }) => {
      tokenForm.needed(`Refused (${reason})`)
      return null
    },
    onError: (error) => {
      if (error.error === 'too_many_views') {
        if (error.code === 4461) overViewLimit()
        return
      }
      if (error.error === 'busy' && client && client.state !== 'online') {
        setStatus('connecting', `Server busy, retrying in ${Math.ceil(error.retryAfter / 1000)} s…`)
      } else if (!error.fatal && error.code !== 1006 && error.code !== 4408) {
        console.warn('frame feed:', error.error, error.detail)
      }
    }
  })
  client.onChange(scheduleRender)
  client.onQueueChange((queue) => {
    scheduleRender()
    // Refused for the token (HTTP 401 / 403): the changes stay queued until a new one.
    if (queue.state === 'blocked' && queue.error && queue.error !== askedFor) {
      askedFor = queue.error
      tokenForm.needed(`Not saved (${queue.error.code - 4000}: ${queue.error.detail})`)
    }
  })
  client.onStateChange(showState)
  client.onPresence(onPresence)
  client.onConflict((t, id, fields, { result }) => {
    const conflicts = Object.keys(fields).sort()
    notify(id, 'conflict', conflictText(conflicts, fields), conflictTitle(conflicts, fields))
  })
  client.onReject((mutation, result) => {
    const what = OP_NAMES[mutation.op] || mutation.op
    const why = {
      exists: 'a record with this id already exists',
      not_found: 'the record no longer exists'
    }[result.error] || result.detail || result.error
    notify(mutation.id, 'error', `Could not ${what} ${mutation.id}: ${why}`)
  })
  showState(client.state, client.error)
}

const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Live',
  disconnected: 'Disconnected — reconnecting…',
  closed: 'Stopped'
}

let statusState = 'connecting'

/** The SDK's state (offline / syncing / online) as the page shows it. */
function showState (state, error) {
  els.status.dataset.state = state
  if (state !== 'online') accepted.clear()
  if (state !== 'online' && presenceById.size) {
    // The server forgets this connection's views: what we knew of them is stale
    // (the views and watches are sent again once the feed is back).
    presenceById.clear()
    scheduleRender()
  }
  if (state === 'online') setStatus('connected')
  else if (state === 'syncing') setStatus('connecting', client.bootstrapped ? null : 'Loading records…')
  else if (error && error.fatal) {
    const why = `Refused (${error.code}: ${error.detail || error.error})`
    if (error.code === 4401 || error.code === 4403) {
      setStatus('closed', `${why} — enter a token`)
      tokenForm.needed(`${why}: enter a token`)
    } else {
      setStatus('closed', why)
    }
  } else setStatus('disconnected')
}

function setStatus (status, text) {
  statusState = status
  els.status.dataset.status = status
  els.status.dataset.synced = String(status === 'connected' && client !== null && client.bootstrapped)
  setText(els.statusText, text || STATUS_TEXT[status] || status)
}

const OP_NAMES = { i: 'create', u: 'change', d: 'delete' }

/** Queue one change of a record of this board: shown at once, sent when possible. */
function mutate (op, id, p) {
  if (op === 'i') client.insert(T, id, p)
  else if (op === 'u') client.save(T, id, p)
  else client.remove(T, id)
}

function conflictText (conflicts, overwritten) {
  const verb = conflicts.length === 1 ? 'was' : 'were'
  let text = `${conflicts.join(', ')} ${verb} changed by someone else`
  const before = overwritten[conflicts[0]]
  if (conflicts.length === 1 && before && before.value !== undefined && before.value !== null) {
    text += ` (to “${shorten(display(before.value), 40)}”)`
  }
  return text + ' — your change replaced it'
}

function conflictTitle (conflicts, overwritten) {
  return conflicts.map((field) => {
    const o = overwritten[field] || {}
    return `${field}: ${display(o.value)} by ${o.who ?? 'unknown'} at sid ${o.sid ?? '?'}`
  }).join('\n')
}

window.addEventListener('online', () => {
  if (!client) return
  client.flush()
  if (client.state === 'offline' && !(client.error && client.error.fatal)) client.reconnect()
})

// ---- notices --------------------------------------------------------------------

/** id -> [{key, kind, text, title}] shown on the card (or as a toast if there is none). */
const notices = new Map()
let noticeCounter = 0

function notify (id, kind, text, title) {
  if (!currentView().has(id)) {
    toast(kind, text)
    return
  }
  announce(`${id}: ${text}`)
  const list = notices.get(id) || []
  list.push({ key: ++noticeCounter, kind, text, title })
  notices.set(id, list.slice(-3))
  scheduleRender()
}

function dismiss (id, key) {
  const list = (notices.get(id) || []).filter((n) => n.key !== key)
  if (list.length) notices.set(id, list)
  else notices.delete(id)
  scheduleRender()
}

function toast (kind, text) {
  const node = el('div', `toast ${kind}`, text)
  els.toasts.append(node)
  setTimeout(() => node.remove(), TOAST_MS)
}

/** Say `text` to screen readers (the visually hidden live region). */
function announce (text) {
  // A new node each time: the same text twice in a row is announced twice.
  els.announcer.replaceChildren(el('span', '', text))
}

// ---- presence: the open card viewed, the cards on screen watched ------------------

let expanded = null // the id of the open card (viewed: we appear in its presence)
const presenceById = new Map() // id -> its `present` list, from {"type": "presence"}
const visible = new Set() // ids whose card is on screen (IntersectionObserver)
const watched = new Set() // ids watched (presence only), never `expanded`
/** Ids the server took on this connection (answered with their presence), not left
 * since: how many views it allows, when it refuses one more. */
const accepted = new Set()
let watchBudget = WATCH_BUDGET
let watchTimer = null
let toldLimit = false

function viewState () {
  return { user: { name: user.name, color: user.color }, board_client: clientId }
}

function sendView (id) {
  client.view(T, id, viewState())
}

function toggle (id) {
  const previous = expanded
  if (previous !== null) {
    client.leave(T, previous) // a view; the card is watched again below if on screen
    accepted.delete(previous)
    presenceById.delete(previous)
  }
  expanded = previous === id ? null : id
  if (expanded !== null) {
    watched.delete(expanded) // the view replaces the watch (and counts as one)
    sendView(expanded)
  }
  syncWatches()
  scheduleRender()
}

function onPresence (message) {
  if (message.t !== T || !Array.isArray(message.present)) return
  if (message.id !== expanded && !watched.has(message.id)) return // left meanwhile
  accepted.add(message.id)
  presenceById.set(message.id, message.present)
  scheduleRender()
}

const cardObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const id = entry.target.dataset.id
    if (entry.isIntersecting) visible.add(id)
    else visible.delete(id)
  }
  scheduleWatches()
}, { rootMargin: '48px' })

function scheduleWatches () {
  if (watchTimer !== null) return
  watchTimer = setTimeout(() => {
    watchTimer = null
    syncWatches()
  }, WATCH_DELAY_MS)
}

/** Watch the cards on screen up to the budget (those nearest the middle of the
 * screen first, when more are on it), leave the others. */
function syncWatches () {
  if (!client) return
  const room = Math.max(0, watchBudget - (expanded !== null ? 1 : 0))
  const middleX = window.innerWidth / 2
  const middleY = window.innerHeight / 2
  const onScreen = []
  for (const id of visible) {
    const node = cards.get(id)
    if (!node || id === expanded) continue
    const box = node.getBoundingClientRect()
    const distance = Math.hypot(box.left + box.width / 2 - middleX, box.top + box.height / 2 - middleY)
    onScreen.push({ id, distance })
  }
  onScreen.sort((a, b) => a.distance - b.distance)
  const want = new Set(onScreen.slice(0, room).map((item) => item.id))
  let changed = false
  for (const id of [...watched]) {
    if (want.has(id)) continue
    watched.delete(id)
    accepted.delete(id)
    client.leave(T, id)
    changed = presenceById.delete(id) || changed
  }
  for (const id of want) {
    if (watched.has(id)) continue
    watched.add(id)
    client.watch(T, id)
  }
  if (changed) scheduleRender()
}

/** The server closed the feed with 4461 (too_many_views): it allows fewer views per
 * connection than we asked for, as many as it had taken when it refused one (each
 * answered with its presence, in order, before the refusal). Ask for no more; the
 * SDK sends the rest again when it reconnects. */
function overViewLimit () {
  const asked = watched.size + (expanded !== null ? 1 : 0)
  const allowed = accepted.size || asked - 1
  watchBudget = Math.max(1, Math.min(watchBudget, allowed))
  syncWatches()
  if (!toldLimit) {
    toldLimit = true
    toast('info', `This server shows who is viewing at most ${watchBudget} cards at a time.`)
  }
}

function presenceEntries (present) {
  const entries = (present || []).map((item) => {
    const state = item && typeof item.state === 'object' && item.state ? item.state : {}
    const peer = state.user && typeof state.user === 'object' ? state.user : {}
    const name = typeof peer.name === 'string' && peer.name.trim()
      ? shorten(peer.name.trim(), 60)
      : `Anonymous ${item.client_id}`
    return {
      key: String(item.client_id),
      name,
      color: /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(peer.color || '') ? peer.color : '#9aa0a6',
      viewer: Boolean(item.viewer),
      self: state.board_client === clientId
    }
  })
  return entries.sort((a, b) => (b.self - a.self) || a.name.localeCompare(b.name))
}

/** Up to two initials: "Ada Lovelace" AD → "AL", "bob" → "B". */
function initials (name) {
  const words = name.replace(/[^\p{L}\p{N}\s]/gu, ' ').trim().split(/\s+/).filter(Boolean)
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words.slice(0, 1)
  const text = letters.map((word) => [...word][0]).join('').toUpperCase()
  return text || '?'
}

function describePeer (entry) {
  return `${entry.name}${entry.self ? ' (you)' : ''}, ${entry.viewer ? 'viewing' : 'editing'}`
}

// ---- rendering --------------------------------------------------------------------

let renderScheduled = false

function scheduleRender () {
  if (renderScheduled) return
  renderScheduled = true
  queueMicrotask(() => {
    renderScheduled = false
    render()
  })
}

/** The SDK's pool of type T (the server's records with this page's own changes on
 * top), plus the cards whose delete is still queued, shown as pending. */
function currentView () {
  const view = new Map()
  if (!client) return view
  for (const [id, record] of client.pool.get(T) || []) {
    const pending = { i: 'create', u: 'change' }[record.pending] || null
    view.set(id, { id, fields: { ...record.fields }, sid: record.sid, pending })
  }
  for (const mutation of client.pending()) {
    if (mutation.t !== T || mutation.op !== 'd' || view.has(mutation.id)) continue
    const confirmed = client.confirmed(T, mutation.id)
    if (confirmed) {
      view.set(mutation.id, { id: mutation.id, fields: { ...confirmed.fields }, sid: confirmed.sid, pending: 'delete' })
    }
  }
  return view
}

function columnOf (status) {
  return COLUMNS.includes(status) ? status : OTHER
}

const collator = new Intl.Collator(undefined, { numeric: true })
const cards = new Map() // id -> card element
/** The card in the tab order (roving tabindex): Tab reaches it and its actions, the
 * arrow keys go to another card. */
let current = null

function render () {
  const view = currentView()
  const byColumn = new Map([...COLUMNS, OTHER].map((name) => [name, []]))
  for (const card of view.values()) byColumn.get(columnOf(card.fields.status)).push(card)

  // Moving a node out of its column blurs what has the focus inside it: the focus
  // follows the card (and focus() scrolls it into view, in another column too).
  const focused = document.activeElement
  const focusedCard = focused && focused.closest ? focused.closest('.rec') : null
  let refocus = focusedCard ? focused : null
  for (const [id, node] of cards) {
    if (!view.has(id) && node === focusedCard) refocus = neighbourFocus(node)
  }

  for (const [name, list] of byColumn) {
    list.sort((a, b) => collator.compare(a.id, b.id))
    const column = $(`.column[data-column="${name}"]`, els.board)
    setText($('.count', column), String(list.length))
    const tab = $(`button[data-column="${name}"] .count`, els.columnTabs)
    if (tab) setText(tab, String(list.length))
    const container = $('.cards', column)
    list.forEach((card, index) => {
      const node = cardElement(card)
      const here = container.children[index]
      if (here !== node) container.insertBefore(node, here || null)
    })
  }
  let dropped = false
  for (const [id, node] of cards) {
    if (!view.has(id)) {
      cardObserver.unobserve(node)
      node.remove()
      cards.delete(id)
      notices.delete(id)
      visible.delete(id)
      presenceById.delete(id)
      if (watched.delete(id)) client.leave(T, id)
      accepted.delete(id)
      if (current === id) current = null
      dropped = true
    }
  }
  if (expanded !== null && !view.has(expanded)) {
    client.leave(T, expanded)
    accepted.delete(expanded)
    expanded = null
  }
  if (dropped) scheduleWatches()
  updateTabStops()
  if (refocus && refocus.isConnected && document.activeElement !== refocus) {
    refocus.focus()
  }

  const lastSid = client ? client.lastSid : 0
  setText(els.lastSid, String(lastSid))
  els.lastSid.dataset.sid = String(lastSid)
  const queue = client ? client.queue : { pending: 0, state: 'idle' }
  const count = queue.pending
  const outboxState = queue.state === 'blocked' ? 'offline' : queue.state
  els.outbox.hidden = count === 0
  els.outbox.dataset.count = String(count)
  els.outbox.dataset.state = outboxState
  els.outbox.dataset.storage = queue.storage || ''
  setText(els.outboxText, `${count} change${count === 1 ? '' : 's'} pending` +
    (outboxState === 'offline' ? ' — server unreachable' : ''))
}

function cardElement (card) {
  let node = cards.get(card.id)
  if (!node) {
    node = buildCard(card.id)
    cards.set(card.id, node)
    cardObserver.observe(node)
  }
  updateCard(node, card)
  return node
}

/** One card (the focused one, else the last one focused, else the first) is in the
 * tab order with its actions; the others are reached with the arrow keys. */
function updateTabStops () {
  if (current === null || !cards.has(current)) {
    const first = $('.rec', els.board)
    current = first ? first.dataset.id : null
  }
  for (const [id, node] of cards) {
    const index = id === current ? 0 : -1
    for (const control of node.querySelectorAll('button, select, a[href]')) {
      if (control.tabIndex !== index) control.tabIndex = index
    }
  }
}

/** Where the focus goes when the card `node` goes away: the next card of its column,
 * else the previous one, else the nearest card of another column, else the form. */
function neighbourFocus (node) {
  const siblings = [...node.parentElement.children].filter((n) => n.classList.contains('rec'))
  const index = siblings.indexOf(node)
  let next = siblings[index + 1] || siblings[index - 1]
  if (!next) {
    const all = [...els.board.querySelectorAll('.rec')].filter((n) => n !== node)
    next = all[0]
  }
  return next ? $('.rec-toggle', next) : els.newTitle
}

function focusCard (node) {
  if (!node) return false
  current = node.dataset.id
  updateTabStops()
  $('.rec-toggle', node).focus()
  return true
}

/** Arrow keys on a card's toggle: another card; Shift+←/→: move this one. */
function onCardKey (event, id) {
  if (event.altKey || event.ctrlKey || event.metaKey) return
  const node = cards.get(id)
  const column = node.closest('.column')
  const list = [...$('.cards', column).children]
  const index = list.indexOf(node)
  const columns = [...els.board.querySelectorAll('.column')]
  const at = columns.indexOf(column)
  if (event.shiftKey) {
    if (event.key !== 'ArrowLeft' && event.key !== 'ArrowRight') return
    event.preventDefault()
    moveBy(id, event.key === 'ArrowLeft' ? -1 : 1)
    return
  }
  let target = null
  if (event.key === 'ArrowDown') target = list[index + 1]
  else if (event.key === 'ArrowUp') target = list[index - 1]
  else if (event.key === 'Home') target = list[0]
  else if (event.key === 'End') target = list[list.length - 1]
  else if (event.key === 'ArrowLeft' || event.key === 'ArrowRight') {
    const step = event.key === 'ArrowLeft' ? -1 : 1
    for (let i = at + step; i >= 0 && i < columns.length && !target; i += step) {
      const others = [...$('.cards', columns[i]).children]
      target = others[Math.min(index, others.length - 1)]
    }
  } else return
  event.preventDefault()
  focusCard(target)
}

/** Move card `id` one column left (-1) or right (+1) among open, doing, done. */
function moveBy (id, step) {
  const card = currentView().get(id)
  if (!card || card.pending === 'delete') return
  const column = columnOf(card.fields.status)
  // "other" sits after done: its left neighbour is done.
  const at = column === OTHER ? COLUMNS.length : COLUMNS.indexOf(column)
  const to = COLUMNS[at + step]
  if (to === undefined) {
    announce(`${cardName(card)} is already in the ${step < 0 ? 'first' : 'last'} column`)
    return
  }
  moveTo(id, to)
}

function moveTo (id, status) {
  const card = currentView().get(id)
  if (!card) return
  mutate('u', id, { status })
  announce(`Moved ${cardName(card)} to ${COLUMN_NAMES[status] || status}`)
}

function cardName (card) {
  const title = display(card.fields.title).trim()
  return `“${shorten(title || card.id, 60)}”`
}

/** The collaborative editor (index.html next to this page) on the record's doc. */
function editorHref (id) {
  return './?' + new URLSearchParams({ doc: `${T}/${id}` })
}

function buildCard (id) {
  const node = el('article', 'rec')
  node.dataset.id = id

  const head = el('header', 'rec-head')
  const toggleButton = el('button', 'rec-toggle')
  toggleButton.type = 'button'
  toggleButton.append(el('span', 'rec-title'), el('span', 'rec-id', id))
  toggleButton.addEventListener('click', () => toggle(id))
  toggleButton.addEventListener('keydown', (event) => onCardKey(event, id))
  toggleButton.setAttribute('aria-describedby', 'card-keys')
  toggleButton.setAttribute('aria-keyshortcuts', 'Shift+ArrowLeft Shift+ArrowRight')
  const viewers = el('ul', 'viewers')
  viewers.hidden = true
  head.append(toggleButton, el('span', 'badge pending'), viewers)
  node.addEventListener('focusin', () => {
    if (current !== id) {
      current = id
      updateTabStops()
    }
  })
  node.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && expanded === id) {
      event.preventDefault()
      toggle(id)
      toggleButton.focus()
    }
  })

  const fields = el('ul', 'rec-fields')
  const body = el('p', 'rec-body')
  const noticeList = el('div', 'notices')

  const presence = el('section', 'rec-presence')
  presence.id = `presence-${randomId(10)}`
  presence.append(el('h3', '', 'Here now'), el('ul', 'presence'))
  toggleButton.setAttribute('aria-controls', presence.id)

  const actions = el('footer', 'rec-actions')
  const moveLabel = el('label', 'move')
  const select = el('select', 'rec-move')
  select.title = 'Move to another column'
  select.addEventListener('change', () => moveTo(id, select.value))
  moveLabel.append(el('span', 'visually-hidden', 'Status'), select)
  const open = el('a', 'rec-open', 'Open in editor')
  open.href = editorHref(id)
  open.target = '_blank'
  // Same origin; an opener link gets a copy of this tab's sessionStorage: the token.
  open.rel = 'opener'
  const remove = el('button', 'rec-delete', 'Delete')
  remove.type = 'button'
  remove.title = `Delete ${id}`
  remove.addEventListener('click', () => {
    const card = currentView().get(id)
    // The card stays (greyed, its buttons disabled) until the server has it: the
    // focus goes on to the next card at once.
    if (node.contains(document.activeElement)) {
      const next = neighbourFocus(node)
      if (next.closest && next.closest('.rec')) focusCard(next.closest('.rec'))
      else next.focus()
    }
    mutate('d', id, {})
    announce(`Deleted ${card ? cardName(card) : id}`)
  })
  actions.append(moveLabel, open, remove)

  node.append(head, fields, body, noticeList, presence, actions)
  return node
}

function updateCard (node, card) {
  const { fields } = card
  const isExpanded = expanded === card.id
  const status = typeof fields.status === 'string' ? fields.status : display(fields.status)
  node.dataset.status = status
  node.dataset.sid = card.sid === null ? '' : String(card.sid)
  node.dataset.expanded = String(isExpanded)
  if (card.pending) node.dataset.pending = card.pending
  else delete node.dataset.pending

  const toggleButton = $('.rec-toggle', node)
  toggleButton.setAttribute('aria-expanded', String(isExpanded))
  const title = display(fields.title).trim()
  setText($('.rec-title', node), title || card.id)
  $('.rec-id', node).hidden = !title
  setText($('.badge.pending', node), {
    create: 'pending', change: 'pending', delete: 'pending delete'
  }[card.pending] || '')

  // Other fields, compactly: `key value` chips.
  const chips = Object.keys(fields).filter((key) => !HIDDEN_FIELDS.has(key)).sort()
  const signature = JSON.stringify(chips.map((key) => [key, fields[key]]))
  const list = $('.rec-fields', node)
  if (list.dataset.signature !== signature) {
    list.dataset.signature = signature
    list.replaceChildren(...chips.map((key) => {
      const item = el('li', 'chip')
      item.dataset.field = key
      const text = display(fields[key])
      item.title = `${key}: ${text}`
      item.append(el('span', 'key', key), el('span', 'value', shorten(text, 40)))
      return item
    }))
  }
  list.hidden = chips.length === 0

  const body = $('.rec-body', node)
  const bodyText = 'body' in fields ? display(fields.body) : ''
  setText(body, bodyText)
  body.hidden = !('body' in fields)
  body.classList.toggle('empty', bodyText === '')

  const noticeList = $('.notices', node)
  const cardNotices = notices.get(card.id) || []
  const noticeKeys = cardNotices.map((n) => n.key).join(',')
  if (noticeList.dataset.keys !== noticeKeys) {
    noticeList.dataset.keys = noticeKeys
    noticeList.replaceChildren(...cardNotices.map((notice) => {
      const item = el('div', `notice ${notice.kind}`)
      item.setAttribute('role', 'status')
      if (notice.title) item.title = notice.title
      const close = el('button', 'dismiss', '×')
      close.type = 'button'
      close.title = 'Dismiss'
      close.setAttribute('aria-label', 'Dismiss this notice')
      close.addEventListener('click', () => dismiss(card.id, notice.key))
      item.append(el('span', 'text', notice.text), close)
      return item
    }))
  }

  const entries = presenceEntries(presenceById.get(card.id))
  updateViewers($('.viewers', node), entries, presenceById.has(card.id))

  const presence = $('.rec-presence', node)
  presence.hidden = !isExpanded
  if (isExpanded) {
    const signature = JSON.stringify(entries)
    const ul = $('ul', presence)
    if (ul.dataset.signature !== signature) {
      ul.dataset.signature = signature
      ul.replaceChildren(...entries.map(presenceItem))
      if (!entries.length) ul.append(el('li', 'nobody', 'Nobody else here yet'))
    }
  }

  const select = $('.rec-move', node)
  const known = COLUMNS.includes(status)
  const options = known ? COLUMNS : [status, ...COLUMNS]
  if (select.dataset.options !== options.join('\n')) {
    select.dataset.options = options.join('\n')
    select.replaceChildren(...options.map((value) => {
      const option = el('option', '', value || '(no status)')
      option.value = value
      if (!COLUMNS.includes(value)) option.disabled = true
      return option
    }))
  }
  if (select.value !== status) select.value = status
  select.disabled = card.pending === 'delete'
  $('.rec-delete', node).disabled = card.pending === 'delete'
}

/** The avatars on the card's head: who is viewing (or editing) it, in their colours. */
function updateViewers (ul, entries, known) {
  const signature = JSON.stringify(entries)
  if (ul.dataset.signature === signature && ul.hidden === !entries.length) return
  ul.dataset.signature = signature
  ul.hidden = entries.length === 0
  ul.dataset.known = String(known)
  const names = entries.map(describePeer)
  ul.setAttribute('aria-label', entries.length ? `Here now: ${names.join('; ')}` : 'Nobody here')
  ul.title = names.join('\n')
  const shown = entries.length > MAX_AVATARS ? entries.slice(0, MAX_AVATARS - 1) : entries
  const items = shown.map((entry) => {
    const li = el('li', entry.self ? 'avatar self' : 'avatar')
    li.dataset.clientId = entry.key
    li.dataset.kind = entry.viewer ? 'viewer' : 'editor'
    li.dataset.name = entry.name
    li.title = describePeer(entry)
    li.style.setProperty('--peer-color', entry.color)
    li.append(el('span', 'initials', initials(entry.name)))
    li.setAttribute('aria-hidden', 'true') // the list's label says it all
    return li
  })
  if (shown.length < entries.length) {
    const rest = entries.slice(shown.length)
    const more = el('li', 'avatar more', `+${rest.length}`)
    more.title = rest.map(describePeer).join('\n')
    more.setAttribute('aria-hidden', 'true')
    items.push(more)
  }
  ul.replaceChildren(...items)
}

function presenceItem (entry) {
  const li = el('li', entry.self ? 'peer self' : 'peer')
  li.dataset.clientId = entry.key
  li.dataset.kind = entry.viewer ? 'viewer' : 'editor'
  li.style.setProperty('--peer-color', entry.color)
  li.append(el('span', 'swatch'), el('span', 'name', entry.name))
  if (entry.self) li.append(el('span', 'you', 'you'))
  li.append(el('span', 'cursor', entry.viewer ? 'viewing' : 'editing'))
  return li
}

// ---- forms ------------------------------------------------------------------------

els.typeName.value = T
document.title = `${T} · crdt-sync board`
els.typeForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const t = els.typeName.value.trim()
  if (!t || t === T) return
  const url = new URL(window.location.href)
  url.searchParams.set('t', t)
  window.location.assign(url)
})

els.userName.value = user.name
els.userName.addEventListener('change', () => {
  const name = els.userName.value.trim().slice(0, 60)
  if (!name) {
    els.userName.value = user.name
    return
  }
  user.name = name
  if (!user.color) user.color = pick(COLORS)
  writeStorage(localStorage, USER_KEY, JSON.stringify(user))
  if (expanded !== null) sendView(expanded)
})

// The column tabs (shown on narrow screens, where the columns are a strip that
// scrolls sideways): go to a column; the tab of the column in view is marked.
for (const button of els.columnTabs.querySelectorAll('button')) {
  button.addEventListener('click', () => {
    const column = $(`.column[data-column="${button.dataset.column}"]`, els.board)
    column.scrollIntoView({ behavior: 'smooth', inline: 'start', block: 'nearest' })
    markTab(button.dataset.column)
    // The next Tab goes to this column's first card.
    const first = $('.rec', column)
    if (first) {
      current = first.dataset.id
      updateTabStops()
    }
  })
}

function markTab (name) {
  for (const button of els.columnTabs.querySelectorAll('button')) {
    if (button.dataset.column === name) button.setAttribute('aria-current', 'true')
    else button.removeAttribute('aria-current')
  }
}

let tabFrame = 0
els.board.addEventListener('scroll', () => {
  if (tabFrame) return
  tabFrame = requestAnimationFrame(() => {
    tabFrame = 0
    const left = els.board.getBoundingClientRect().left
    let best = null
    let bestDistance = Infinity
    for (const column of els.board.querySelectorAll('.column')) {
      const distance = Math.abs(column.getBoundingClientRect().left - left)
      if (distance < bestDistance) {
        best = column
        bestDistance = distance
      }
    }
    if (best) markTab(best.dataset.column)
  })
}, { passive: true })
markTab('open')

els.createForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const id = els.newId.value.trim() || randomId(6)
  const title = els.newTitle.value.trim()
  let error = ''
  if (!validName(`${T}/${id}`)) error = 'That id cannot be used (too long or control characters).'
  else if (currentView().has(id)) error = `A card “${shorten(id, 40)}” already exists.`
  setText(els.createError, error)
  if (error) return
  mutate('i', id, title ? { title, status: 'open' } : { status: 'open' })
  els.newId.value = ''
  els.newTitle.value = ''
  els.newTitle.focus()
})

tokenForm = bindTokenForm()
// Forget hides itself: the focus goes to the token field rather than to nowhere.
$('#token-clear').addEventListener('click', () => $('#token-input').focus())
// A new token may grant other records (or another tenant): the SDK starts over with
// it (pool cleared, that identity's own queue).
onTokenChange((token) => {
  if (client) client.setToken(token)
})

els.outboxRetry.addEventListener('click', () => client.flush())

// Handy from the devtools console (and for tests): the page's state.
window.crdtBoard = {
  get t () { return T },
  get clientId () { return clientId },
  get lastSid () { return client ? client.lastSid : 0 },
  get outbox () { return client ? client.pending() : [] },
  get records () {
    const map = new Map()
    for (const [id, record] of client ? client.pool.get(T) || [] : []) map.set(id, record)
    return map
  },
  get status () { return statusState },
  get watching () { return [...watched] },
  get viewing () { return expanded },
  get watchBudget () { return watchBudget },
  get client () { return client },
  flush: () => client.flush(),
  reconnect: () => client.reconnect()
}

if (typeError) {
  setStatus('closed', typeError)
} else {
  startClient()
  render()
}
