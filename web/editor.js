// The collaborative editor page: a Y.Text named `body` in a <textarea>, synced
// with the crdt-sync server over y-websocket, with presence from awareness.
import { Y, WebsocketProvider } from './vendor/yjs-bundle.js'
import { bindTextarea } from './textarea-binding.js'
import { AUTH_CLOSE_CODES, bindTokenForm, onTokenChange, tokenParams } from './auth.js'

const DEFAULT_DOC = 'notes/welcome'
const USER_KEY = 'crdt-sync.user'

const COLORS = [
  '#e0555b', '#e8843a', '#d4a514', '#4caf50', '#26a69a',
  '#2f8fd8', '#5c6bc0', '#9c5fc9', '#d05d9e', '#7f8c8d'
]
const ADJECTIVES = [
  'Amber', 'Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Jolly',
  'Lucky', 'Nimble', 'Quiet', 'Swift', 'Sunny', 'Witty'
]
const ANIMALS = [
  'Badger', 'Crane', 'Dolphin', 'Falcon', 'Fox', 'Heron', 'Koala', 'Lynx',
  'Otter', 'Owl', 'Panda', 'Robin', 'Seal', 'Tiger'
]

const $ = (selector) => document.querySelector(selector)
const els = {
  docForm: $('#doc-form'),
  docName: $('#doc-name'),
  status: $('#status'),
  statusText: $('#status-text'),
  editor: $('#editor'),
  userName: $('#user-name'),
  userColor: $('#user-color'),
  presence: $('#presence'),
  presenceCount: $('#presence-count'),
  stats: $('#stats')
}

const pick = (list) => list[Math.floor(Math.random() * list.length)]

// ---- the local user (name + color), kept in localStorage --------------------

function loadUser () {
  try {
    const stored = JSON.parse(localStorage.getItem(USER_KEY) || 'null')
    if (stored && typeof stored.name === 'string' && isColor(stored.color)) return stored
  } catch (_) {
    // unreadable or blocked storage: fall through to a fresh random user
  }
  const user = { name: `${pick(ADJECTIVES)} ${pick(ANIMALS)}`, color: pick(COLORS) }
  saveUser(user)
  return user
}

function saveUser (user) {
  try {
    localStorage.setItem(USER_KEY, JSON.stringify(user))
  } catch (_) {
    // storage may be disabled (private mode); the name then lasts for this page only
  }
}

// Awareness states come from other clients: never trust them as CSS or HTML.
function isColor (value) {
  return typeof value === 'string' && /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(value)
}

const user = loadUser()
els.userName.value = user.name
els.userColor.value = user.color.length === 4
  ? '#' + [...user.color.slice(1)].map((c) => c + c).join('')
  : user.color

// ---- one open document at a time ----------------------------------------------

/** ws://host/yjs (or wss://), found relative to this page so a path prefix keeps working. */
function serverUrl () {
  const url = new URL('../yjs', window.location.href)
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
  url.search = ''
  url.hash = ''
  return url.href
}

/** Each path segment percent-encoded; y-websocket appends the room name to the URL as is. */
function roomPath (docName) {
  return docName.split('/').map(encodeURIComponent).join('/')
}

let session = null

function openDoc (docName) {
  if (session) session.close()
  const ydoc = new Y.Doc()
  const ytext = ydoc.getText('body')
  const provider = new WebsocketProvider(serverUrl(), roomPath(docName), ydoc, {
    // Tabs of one browser would otherwise also sync with each other directly;
    // this page shows what the server relays, nothing else.
    disableBc: true,
    // The token (fragment or form, see auth.js) goes on the URL: ?token=…
    params: tokenParams()
  })
  const awareness = provider.awareness
  awareness.setLocalStateField('user', { name: user.name, color: user.color })

  const binding = bindTextarea(ytext, els.editor, {
    onRemoteChange: () => { publishCursor(); renderStats() }
  })

  let lastCursor = ''
  function publishCursor () {
    const { selectionStart, selectionEnd, selectionDirection } = els.editor
    const [anchor, head] = selectionDirection === 'backward'
      ? [selectionEnd, selectionStart]
      : [selectionStart, selectionEnd]
    const key = `${anchor}:${head}`
    if (key === lastCursor) return // awareness re-broadcasts on every set: skip no-ops
    lastCursor = key
    // assoc -1: a position sticks to the character on its left, so text inserted
    // exactly there lands after it, as the textarea binding moves the local caret.
    const relative = (index) =>
      Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, index, -1))
    awareness.setLocalStateField('cursor', { anchor: relative(anchor), head: relative(head) })
  }

  function absolute (json) {
    if (!json) return null
    try {
      const pos = Y.createAbsolutePositionFromRelativePosition(
        Y.createRelativePositionFromJSON(json), ydoc)
      return pos && pos.type === ytext ? pos.index : null
    } catch (_) {
      return null // a malformed position from a remote client: show no cursor
    }
  }

  function renderPresence () {
    const text = ytext.toString()
    const entries = []
    for (const [clientId, state] of awareness.getStates()) {
      if (!state) continue
      const peer = state.user || {}
      entries.push({
        clientId,
        self: clientId === ydoc.clientID,
        name: typeof peer.name === 'string' && peer.name.trim()
          ? peer.name.trim().slice(0, 60)
          : `Anonymous ${clientId}`,
        color: isColor(peer.color) ? peer.color : '#9aa0a6',
        anchor: absolute(state.cursor && state.cursor.anchor),
        head: absolute(state.cursor && state.cursor.head)
      })
    }
    entries.sort((a, b) => (b.self - a.self) || a.name.localeCompare(b.name))

    els.presence.replaceChildren(...entries.map((entry) => presenceItem(entry, text)))
    els.presenceCount.textContent = String(entries.length)
  }

  function renderStats () {
    const length = ytext.length
    els.stats.textContent = `${length} character${length === 1 ? '' : 's'}`
  }

  const onSelection = () => publishCursor()
  const selectionEvents = ['select', 'keyup', 'mouseup', 'input', 'focus']
  for (const type of selectionEvents) els.editor.addEventListener(type, onSelection)
  document.addEventListener('selectionchange', onSelection)

  const onStatus = ({ status }) => setStatus(status, provider.synced)
  const onSync = (synced) => setStatus(provider.wsconnected ? 'connected' : 'connecting', synced)
  const onClosed = ({ code, reason }) => {
    const why = `Closed by server (${code}${reason ? ': ' + reason : ''})`
    setStatus('closed', false, why)
    if (AUTH_CLOSE_CODES.has(code)) tokenForm.needed(`${why}: enter a token`)
  }
  provider.on('status', onStatus)
  provider.on('sync', onSync)
  provider.on('closed', onClosed)
  awareness.on('change', renderPresence)
  ytext.observe(renderPresence)
  setStatus('connecting', false)
  renderPresence()
  renderStats()
  els.editor.addEventListener('input', renderStats)

  session = {
    docName,
    ydoc,
    ytext,
    provider,
    awareness,
    setUser () {
      awareness.setLocalStateField('user', { name: user.name, color: user.color })
    },
    reconnect () {
      // Same doc and provider: edits made meanwhile are synced on reconnect.
      provider.params = tokenParams()
      provider.disconnect()
      provider.connect()
    },
    rejoin () {
      lastCursor = ''
      awareness.setLocalState({ user: { name: user.name, color: user.color } })
      publishCursor()
    },
    close () {
      for (const type of selectionEvents) els.editor.removeEventListener(type, onSelection)
      document.removeEventListener('selectionchange', onSelection)
      els.editor.removeEventListener('input', renderStats)
      awareness.off('change', renderPresence)
      ytext.unobserve(renderPresence)
      binding.destroy()
      // Say goodbye while the socket is still open (destroy() itself sends nothing).
      awareness.setLocalState(null)
      provider.destroy()
      ydoc.destroy()
    }
  }
  // Handy from the devtools console: `crdtSync.ytext.toString()`.
  window.crdtSync = session
  els.docName.value = docName
  document.title = `${docName} · crdt-sync`
}

function presenceItem (entry, text) {
  const li = document.createElement('li')
  li.className = entry.self ? 'peer self' : 'peer'
  li.dataset.clientId = String(entry.clientId)
  li.style.setProperty('--peer-color', entry.color)

  const swatch = document.createElement('span')
  swatch.className = 'swatch'
  const name = document.createElement('span')
  name.className = 'name'
  name.textContent = entry.name
  li.append(swatch, name)
  if (entry.self) {
    const you = document.createElement('span')
    you.className = 'you'
    you.textContent = 'you'
    li.append(you)
  }

  const where = document.createElement('span')
  where.className = 'cursor'
  if (entry.head === null) {
    where.textContent = 'no cursor yet'
  } else {
    li.dataset.anchor = String(entry.anchor ?? entry.head)
    li.dataset.head = String(entry.head)
    const anchor = entry.anchor ?? entry.head
    where.textContent = describeCursor(text, anchor, entry.head)
    where.title = `character offset ${entry.head}`
    if (text.length > 0) {
      li.append(where, snippet(text, anchor, entry.head))
      return li
    }
  }
  li.append(where)
  return li
}

const SNIPPET_CONTEXT = 14

/** A few characters of the cursor's line around it: `…from A.▏ Hi fr…`, the selection marked. */
function snippet (text, anchor, head) {
  const from = Math.min(anchor, head)
  const to = Math.max(anchor, head)
  const lineStart = from === 0 ? 0 : text.lastIndexOf('\n', from - 1) + 1
  const lineEnd = text.indexOf('\n', to) === -1 ? text.length : text.indexOf('\n', to)
  const start = Math.max(lineStart, from - SNIPPET_CONTEXT)
  const end = Math.min(lineEnd, to + SNIPPET_CONTEXT)

  const el = document.createElement('span')
  el.className = 'snippet'
  el.append((start > lineStart ? '…' : '') + text.slice(start, from))
  if (to > from) {
    const mark = document.createElement('mark')
    const selected = text.slice(from, to).replace(/\n/g, '⏎')
    mark.textContent = selected.length > 24 ? selected.slice(0, 23) + '…' : selected
    el.append(mark)
  } else {
    const caret = document.createElement('span')
    caret.className = 'caret'
    el.append(caret)
  }
  el.append(text.slice(to, end) + (end < lineEnd ? '…' : ''))
  return el
}

function lineCol (text, index) {
  const before = text.slice(0, index)
  const line = before.split('\n').length
  const col = index - before.lastIndexOf('\n')
  return `line ${line}, col ${col}`
}

function describeCursor (text, anchor, head) {
  const at = `at ${lineCol(text, head)}`
  const selected = Math.abs(head - anchor)
  return selected ? `${at} · ${selected} selected` : at
}

// ---- status, forms -------------------------------------------------------------

const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  disconnected: 'Disconnected — retrying…',
  closed: 'Closed by server'
}

/** `status` is y-websocket's (connecting, connected, disconnected) or `closed` (no retry). */
function setStatus (status, synced, text) {
  els.status.dataset.status = status
  els.status.dataset.synced = String(Boolean(synced))
  els.statusText.textContent = text ||
    (status === 'connected' && !synced ? 'Syncing…' : STATUS_TEXT[status] || status)
}

function docFromUrl () {
  const name = new URLSearchParams(window.location.search).get('doc')
  return name && name.trim() ? name.trim() : DEFAULT_DOC
}

els.docForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const docName = els.docName.value.trim()
  if (!docName || (session && docName === session.docName)) return
  const url = new URL(window.location.href)
  url.searchParams.set('doc', docName)
  window.history.pushState({ doc: docName }, '', url)
  openDoc(docName)
})

window.addEventListener('popstate', () => {
  const docName = docFromUrl()
  if (!session || docName !== session.docName) openDoc(docName)
})

const tokenForm = bindTokenForm()
// A new token means a new connection (the server checks it at the handshake).
onTokenChange(() => { if (session) session.reconnect() })

els.userName.addEventListener('change', () => {
  const name = els.userName.value.trim().slice(0, 60)
  if (!name) {
    els.userName.value = user.name
    return
  }
  user.name = name
  saveUser(user)
  if (session) session.setUser()
})

els.userColor.addEventListener('input', () => {
  user.color = els.userColor.value
  saveUser(user)
  if (session) session.setUser()
})

// Say goodbye on the way out so others drop us at once (the server also removes
// the states of a connection that vanishes); come back from the back/forward cache.
window.addEventListener('pagehide', () => {
  if (session) session.awareness.setLocalState(null)
})
window.addEventListener('pageshow', (event) => {
  if (event.persisted && session) session.rejoin()
})

openDoc(docFromUrl())
