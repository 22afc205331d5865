// The collaborative editor page: CodeMirror 6 bound to the doc's Y.Text `body`
// with y-codemirror.next (remote carets and selections in the text, undo of
// one's own edits), synced through the crdt-sync server with y-websocket, and
// kept in the browser with y-indexeddb so that edits made offline survive a
// reload and reach everyone when the server is back.
import {
  Y,
  WebsocketProvider,
  IndexeddbPersistence,
  yCollab,
  yUndoManagerKeymap,
  EditorState,
  Compartment,
  EditorView,
  keymap,
  placeholder,
  drawSelection,
  highlightSpecialChars,
  highlightActiveLine,
  defaultKeymap
} from './vendor/yjs-bundle.js'
import { bindTokenForm, getToken, onTokenChange, tokenIdentity, tokenParams } from './auth.js'

const DEFAULT_DOC = 'notes/welcome'
const USER_KEY = 'crdt-sync.user'
const CLOSED_KEY = 'crdt-sync.editor.closed:' // + storage key: the server deleted this doc
const NAME_MAX = 60
const LOCAL_LOAD_TIMEOUT_MS = 3000

const COLORS = [
  '#e0555b', '#e8843a', '#c99a06', '#3f9f48', '#1f978b',
  '#2f8fd8', '#5c6bc0', '#9c5fc9', '#d05d9e', '#6b7a7b'
]
const ADJECTIVES = [
  'Amber', 'Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Jolly',
  'Lucky', 'Nimble', 'Quiet', 'Swift', 'Sunny', 'Witty'
]
const ANIMALS = [
  'Badger', 'Crane', 'Dolphin', 'Falcon', 'Fox', 'Heron', 'Koala', 'Lynx',
  'Otter', 'Owl', 'Panda', 'Robin', 'Seal', 'Tiger'
]

/**
 * Server close codes after which reconnecting cannot help (see rooms/close_codes.py).
 * y-websocket is told to stop on exactly these; every other close (server restart,
 * 4408 ping timeout, 4429 too fast, 1013 busy...) is retried with backoff.
 */
const TERMINAL_CLOSES = new Map([
  [4404, {
    title: 'This document was deleted on the server.',
    text: 'Editing is off. Your copy stays in this browser: download it to keep what you wrote, or start over with an empty document.'
  }],
  [4403, {
    title: 'Your access token does not allow this document.',
    text: 'Editing is off until you paste a token that does (Access, in the side panel). What you wrote is kept in this browser and sent once you are let in.'
  }],
  [4401, {
    title: 'Your access token has expired or is not valid.',
    text: 'Editing is off until you paste a new token (Access, in the side panel). What you wrote is kept in this browser and sent once you are let in.'
  }],
  [4400, {
    title: 'The server refuses this document name.',
    text: 'Open another document from the box at the top.'
  }],
  [4413, {
    title: 'The document is larger than the server accepts.',
    text: 'Editing is off so that nothing is written that the server would refuse. Download your copy to keep it.'
  }]
])

const $ = (selector) => document.querySelector(selector)
const els = {
  docForm: $('#doc-form'),
  docName: $('#doc-name'),
  docTitle: $('#doc-title'),
  status: $('#status'),
  statusText: $('#status-text'),
  banner: $('#banner'),
  bannerTitle: $('#banner-title'),
  bannerText: $('#banner-text'),
  bannerDownload: $('#banner-download'),
  bannerReset: $('#banner-reset'),
  readonlyTag: $('#readonly-tag'),
  undo: $('#undo'),
  redo: $('#redo'),
  editor: $('#editor'),
  stats: $('#stats'),
  localState: $('#local-state'),
  userForm: $('#user-form'),
  userName: $('#user-name'),
  userColor: $('#user-color'),
  presence: $('#presence'),
  presenceCount: $('#presence-count')
}

const pick = (list) => list[Math.floor(Math.random() * list.length)]

// ---- the local user (name + colour), kept in localStorage --------------------------

/** Awareness states come from other clients: never trust them as CSS or HTML. */
function isColor (value) {
  return typeof value === 'string' && /^#[0-9a-f]{6}$/i.test(value)
}

function cleanName (value, fallback) {
  return typeof value === 'string' && value.trim() ? value.trim().slice(0, NAME_MAX) : fallback
}

function loadUser () {
  try {
    const stored = JSON.parse(localStorage.getItem(USER_KEY) || 'null')
    if (stored && typeof stored.name === 'string' && isColor(stored.color)) {
      return { name: cleanName(stored.name, 'Anonymous'), color: stored.color }
    }
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

const user = loadUser()
els.userName.value = user.name
els.userColor.value = user.color

/** The awareness `user` field, as y-codemirror.next and other Yjs editors read it. */
const userState = () => ({ name: user.name, color: user.color, colorLight: user.color + '33' })

// ---- where the doc lives ---------------------------------------------------------

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

/** The token's organisation (docs are per organisation), `-` for an open server. */
function orgOf (token) {
  const identity = tokenIdentity(token)
  return identity.includes('/') ? identity.split('/')[0] : identity === 'open' ? '-' : identity
}

/** The IndexedDB name of a doc's local copy: one per server, organisation and doc. */
function storageKey (docName) {
  return `crdt-sync:${serverUrl()}|${orgOf(getToken())}|${docName}`
}

function readClosed (key) {
  try { return JSON.parse(localStorage.getItem(CLOSED_KEY + key) || 'null') } catch (_) { return null }
}

function writeClosed (key, value) {
  try {
    if (value) localStorage.setItem(CLOSED_KEY + key, JSON.stringify(value))
    else localStorage.removeItem(CLOSED_KEY + key)
  } catch (_) {
    // storage disabled: the deletion notice lasts for this page only
  }
}

// ---- remote awareness, cleaned before CodeMirror draws it ---------------------------

const safeCursorCache = new WeakMap()

/** A remote cursor as Yjs relative positions, or null when it is not a valid one. */
function cleanCursor (cursor, ydoc) {
  if (!cursor || typeof cursor !== 'object') return null
  const cached = safeCursorCache.get(cursor)
  if (cached !== undefined) return cached
  let clean = null
  try {
    const anchor = Y.createRelativePositionFromJSON(cursor.anchor)
    const head = Y.createRelativePositionFromJSON(cursor.head)
    // Resolving must not throw later inside the editor's update cycle.
    Y.createAbsolutePositionFromRelativePosition(anchor, ydoc)
    Y.createAbsolutePositionFromRelativePosition(head, ydoc)
    clean = { anchor, head }
  } catch (_) {
    clean = null // a malformed position from a remote client: show no cursor
  }
  safeCursorCache.set(cursor, clean)
  return clean
}

function cleanState (state, clientId, ydoc) {
  const peer = (state && state.user) || {}
  const color = isColor(peer.color) ? peer.color : '#6b7a7b'
  return {
    user: { name: cleanName(peer.name, `Anonymous ${clientId}`), color, colorLight: color + '33' },
    cursor: cleanCursor(state && state.cursor, ydoc)
  }
}

/**
 * The awareness as yCollab sees it: the real one, except that other clients' states
 * are cleaned (a colour that is not `#rrggbb` would otherwise go into a style
 * attribute as is, and a malformed cursor would throw while drawing).
 */
function safeAwareness (awareness) {
  const ydoc = awareness.doc
  // y-codemirror.next 0.3.6 reuses a caret's DOM while its colour string is
  // unchanged (its widget's eq() compares the colour only), so a peer's new name
  // would never show. On each rename the colour is written the other way
  // (#rrggbb <-> #rrggbbff, the same opaque colour), which redraws the label.
  const names = new Map() // clientId -> { name, alt }
  return {
    doc: ydoc,
    on: (name, f) => awareness.on(name, f),
    off: (name, f) => awareness.off(name, f),
    getLocalState: () => awareness.getLocalState(),
    setLocalStateField: (field, value) => awareness.setLocalStateField(field, value),
    getStates () {
      const states = new Map()
      for (const [clientId, state] of awareness.getStates()) {
        if (!state) continue
        if (clientId === ydoc.clientID) {
          states.set(clientId, state)
          continue
        }
        const clean = cleanState(state, clientId, ydoc)
        const seen = names.get(clientId)
        if (!seen) names.set(clientId, { name: clean.user.name, alt: false })
        else if (seen.name !== clean.user.name) Object.assign(seen, { name: clean.user.name, alt: !seen.alt })
        if (names.get(clientId).alt) clean.user.color += 'ff'
        states.set(clientId, clean)
      }
      for (const clientId of names.keys()) if (!states.has(clientId)) names.delete(clientId)
      return states
    }
  }
}

// ---- the connection badge and the banner --------------------------------------------

const BADGE_TEXT = { connected: 'Connected', syncing: 'Syncing', offline: 'Offline' }

/** `state`: connected (synced with the server), syncing, offline; `closed` shows Offline too. */
function setBadge (state) {
  els.status.dataset.status = state
  els.status.dataset.synced = String(state === 'connected')
  els.statusText.textContent = BADGE_TEXT[state] || BADGE_TEXT.offline
}

function showBanner (title, text, { deleted = false } = {}) {
  els.bannerTitle.textContent = title
  els.bannerText.textContent = text
  els.bannerReset.hidden = !deleted
  els.banner.hidden = false
}

function hideBanner () {
  els.banner.hidden = true
  els.bannerTitle.textContent = ''
  els.bannerText.textContent = ''
}

// ---- one open document at a time ----------------------------------------------------

let session = null

function openDoc (docName) {
  if (session) session.close()
  const key = storageKey(docName)
  const ydoc = new Y.Doc()
  const ytext = ydoc.getText('body')
  const provider = new WebsocketProvider(serverUrl(), roomPath(docName), ydoc, {
    connect: false, // after the local copy is loaded (below)
    // Tabs of one browser would otherwise also sync with each other directly;
    // this page shows what the server relays, nothing else.
    disableBc: true,
    // The token (fragment or form, see auth.js) goes on the URL: ?token=…
    params: tokenParams(),
    maxBackoffTime: 5000,
    shouldReconnect: (event) => !TERMINAL_CLOSES.has(event.code)
  })
  const awareness = provider.awareness
  awareness.setLocalStateField('user', userState())

  let persistence = null
  try {
    persistence = new IndexeddbPersistence(key, ydoc)
  } catch (error) {
    console.warn('IndexedDB unavailable: this doc is not kept in the browser', error)
  }
  renderLocalState(persistence !== null)

  const undoManager = new Y.UndoManager(ytext)
  const editable = new Compartment()
  const editableExtensions = (on) => [
    EditorState.readOnly.of(!on),
    EditorView.editable.of(on),
    EditorView.contentAttributes.of({ 'aria-readonly': String(!on) })
  ]

  let readOnly = false
  // Undo acts on the Y.Text directly, past CodeMirror's read-only: hold it back
  // (keys here, the browser's own undo below).
  const guard = (command) => command && ((target) => readOnly || command(target))
  const undoKeys = yUndoManagerKeymap.map((binding) => ({
    ...binding, run: guard(binding.run), shift: guard(binding.shift)
  }))

  els.editor.replaceChildren()
  const view = new EditorView({
    parent: els.editor,
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        // No Tab binding: Tab moves the focus on (no keyboard trap in the page).
        keymap.of([...undoKeys, ...defaultKeymap]),
        highlightSpecialChars(),
        drawSelection(),
        highlightActiveLine(),
        EditorView.lineWrapping,
        placeholder('Start typing — everyone in this document sees it live.'),
        EditorView.contentAttributes.of({
          'aria-label': `Document ${docName}`,
          'aria-multiline': 'true',
          spellcheck: 'true'
        }),
        editable.of(editableExtensions(true)),
        // Before yCollab's own handler: the browser's native undo (Ctrl+Z with the
        // focus outside the editor) arrives as `beforeinput` historyUndo there.
        EditorView.domEventHandlers({
          beforeinput (event) {
            if (!readOnly) return false
            event.preventDefault()
            return true
          }
        }),
        yCollab(ytext, safeAwareness(awareness), { undoManager }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged) renderStats()
        })
      ]
    })
  })

  function setReadOnly (on) {
    if (on === readOnly) return
    readOnly = on
    view.dispatch({ effects: editable.reconfigure(editableExtensions(!on)) })
    els.readonlyTag.hidden = !on
    renderUndo()
  }

  // -- connection state --
  let stopped = null // the terminal close, while the server refuses this doc
  let connected = false
  let everConnected = false
  let failedOnce = false
  const updateBadge = () => {
    if (stopped || !connected) setBadge('offline')
    else setBadge(provider.synced ? 'connected' : 'syncing')
  }
  const onStatus = ({ status }) => {
    connected = status === 'connected'
    // Before the first answer the page is trying: Syncing, not Offline.
    if (status === 'connecting' && !everConnected && !failedOnce) setBadge('syncing')
    else updateBadge()
    if (connected) everConnected = true
  }
  const onConnectionLost = () => { failedOnce = true; connected = false; updateBadge() }
  const onSync = (synced) => {
    if (synced && stopped && !stopped.deleted) {
      // Let in again (a new token): edit again, what was typed meanwhile is synced.
      stopped = null
      hideBanner()
      setReadOnly(false)
    }
    updateBadge()
  }
  const onClosed = ({ code, reason }) => stop(code, reason)
  provider.on('status', onStatus)
  provider.on('sync', onSync)
  provider.on('connection-close', onConnectionLost)
  provider.on('connection-error', onConnectionLost)
  provider.on('closed', onClosed)

  function stop (code, reason) {
    const why = (code === 4401 && !getToken() && {
      title: 'This server needs an access token.',
      text: 'Editing is off until you paste one (Access, in the side panel). What you wrote is kept in this browser and sent once you are let in.'
    }) || TERMINAL_CLOSES.get(code) || {
      title: `The server closed this document (${code}).`,
      text: reason || 'Editing is off; your copy stays in this browser.'
    }
    stopped = { code, deleted: code === 4404 }
    connected = false
    provider.disconnect() // no retry (y-websocket already stopped; this makes it explicit)
    setReadOnly(true)
    showBanner(why.title, why.text, { deleted: stopped.deleted })
    updateBadge()
    if (code === 4404) writeClosed(key, { code, at: Date.now() })
    if (code === 4401 || code === 4403) tokenForm.needed(why.title)
  }

  // -- local copy first, then the server --
  const closedBefore = readClosed(key)
  const localReady = persistence
    ? Promise.race([
      persistence.whenSynced,
      new Promise((resolve) => setTimeout(resolve, LOCAL_LOAD_TIMEOUT_MS))
    ]).catch(() => {})
    : Promise.resolve()
  let closed = false
  localReady.then(() => {
    if (closed) return
    if (closedBefore) stop(closedBefore.code, '') // deleted earlier: do not bring it back
    else provider.connect()
  })

  // -- undo / redo of one's own edits --
  function renderUndo () {
    els.undo.disabled = readOnly || undoManager.undoStack.length === 0
    els.redo.disabled = readOnly || undoManager.redoStack.length === 0
  }
  for (const event of ['stack-item-added', 'stack-item-popped', 'stack-cleared']) {
    undoManager.on(event, renderUndo)
  }

  // -- presence list --
  function renderPresence () {
    const text = ytext.toString()
    const entries = []
    for (const [clientId, state] of awareness.getStates()) {
      if (!state) continue
      const clean = cleanState(state, clientId, ydoc)
      entries.push({
        clientId,
        self: clientId === ydoc.clientID,
        name: clean.user.name,
        color: clean.user.color,
        anchor: absolute(clean.cursor && clean.cursor.anchor),
        head: absolute(clean.cursor && clean.cursor.head)
      })
    }
    entries.sort((a, b) => (b.self - a.self) || a.name.localeCompare(b.name))
    els.presence.replaceChildren(...entries.map((entry) => presenceItem(entry, text)))
    els.presenceCount.textContent = String(entries.length)
  }

  function absolute (relative) {
    if (!relative) return null
    try {
      const pos = Y.createAbsolutePositionFromRelativePosition(relative, ydoc)
      return pos && pos.type === ytext ? pos.index : null
    } catch (_) {
      return null
    }
  }

  function renderStats () {
    const length = ytext.length
    els.stats.textContent = `${length} character${length === 1 ? '' : 's'}`
  }

  awareness.on('change', renderPresence)
  ytext.observe(renderPresence)
  setBadge('syncing')
  renderPresence()
  renderStats()
  renderUndo()

  session = {
    docName,
    key,
    ydoc,
    ytext,
    provider,
    awareness,
    persistence,
    undoManager,
    view,
    get stopped () { return stopped },
    setUser () {
      awareness.setLocalStateField('user', userState())
    },
    undo () { if (!readOnly) undoManager.undo() },
    redo () { if (!readOnly) undoManager.redo() },
    download () {
      const blob = new Blob([ytext.toString()], { type: 'text/plain;charset=utf-8' })
      const link = document.createElement('a')
      link.href = URL.createObjectURL(blob)
      link.download = `${docName.replace(/[^\w.-]+/g, '-')}.txt`
      document.body.append(link)
      link.click()
      link.remove()
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000)
    },
    async startOver () {
      // Only offered for a deleted doc: forget the local copy, open it anew (empty).
      writeClosed(key, null)
      if (persistence) await persistence.clearData()
      openDoc(docName)
    },
    tokenChanged () {
      if (storageKey(docName) !== key) {
        openDoc(docName) // another organisation: another doc, another local copy
        return
      }
      if (stopped && stopped.deleted) return
      provider.params = tokenParams()
      provider.disconnect()
      provider.connect()
    },
    rejoin () {
      awareness.setLocalState({ user: userState() })
    },
    close () {
      closed = true
      awareness.off('change', renderPresence)
      ytext.unobserve(renderPresence)
      provider.off('status', onStatus)
      provider.off('sync', onSync)
      provider.off('connection-close', onConnectionLost)
      provider.off('connection-error', onConnectionLost)
      provider.off('closed', onClosed)
      // Say goodbye while the socket is still open (destroy() itself sends nothing).
      awareness.setLocalState(null)
      view.destroy()
      provider.destroy()
      if (persistence) persistence.destroy()
      undoManager.destroy()
      ydoc.destroy()
      hideBanner()
      els.readonlyTag.hidden = true
    }
  }
  // Handy from the devtools console: `crdtSync.ytext.toString()`.
  window.crdtSync = session
  els.docName.value = docName
  els.docTitle.textContent = docName
  document.title = `${docName} · crdt-sync`
}

function presenceItem (entry, text) {
  const li = document.createElement('li')
  li.className = entry.self ? 'peer self' : 'peer'
  li.dataset.clientId = String(entry.clientId)
  li.style.setProperty('--peer-color', entry.color)

  const swatch = document.createElement('span')
  swatch.className = 'swatch'
  swatch.setAttribute('aria-hidden', 'true')
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
    where.textContent = 'not in the text'
  } else {
    const anchor = entry.anchor ?? entry.head
    li.dataset.anchor = String(anchor)
    li.dataset.head = String(entry.head)
    where.textContent = describeCursor(text, anchor, entry.head)
  }
  li.append(where)
  return li
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

// ---- offline: the local copy (IndexedDB) and the page's own files (service worker) ----

let localCopy = true
let pageCached = false

function renderLocalState (kept = localCopy) {
  localCopy = kept
  els.localState.textContent = !kept
    ? 'Not kept in this browser (storage blocked)'
    : pageCached ? 'Saved in this browser · opens offline' : 'Saved in this browser'
}

function registerServiceWorker () {
  if (!('serviceWorker' in navigator)) return
  navigator.serviceWorker.register('editor-sw.js').catch((error) => {
    console.warn('no service worker: the page will not open while the server is away', error)
  })
  const controlled = () => {
    pageCached = navigator.serviceWorker.controller !== null
    renderLocalState()
  }
  navigator.serviceWorker.addEventListener('controllerchange', controlled)
  controlled()
}

// ---- forms and page events ------------------------------------------------------------

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
onTokenChange(() => { if (session) session.tokenChanged() })

els.userForm.addEventListener('submit', (event) => event.preventDefault())
els.userName.addEventListener('change', () => {
  const name = cleanName(els.userName.value, '')
  if (!name) {
    els.userName.value = user.name
    return
  }
  user.name = name
  saveUser(user)
  if (session) session.setUser()
})

els.userColor.addEventListener('input', () => {
  if (!isColor(els.userColor.value)) return
  user.color = els.userColor.value
  saveUser(user)
  if (session) session.setUser()
})

els.undo.addEventListener('click', () => { if (session) session.undo() })
els.redo.addEventListener('click', () => { if (session) session.redo() })
els.bannerDownload.addEventListener('click', () => { if (session) session.download() })
els.bannerReset.addEventListener('click', () => { if (session) session.startOver() })

// Say goodbye on the way out so others drop us at once (the server also removes
// the states of a connection that vanishes); come back from the back/forward cache.
window.addEventListener('pagehide', () => {
  if (session) session.awareness.setLocalState(null)
})
window.addEventListener('pageshow', (event) => {
  if (event.persisted && session) session.rejoin()
})

openDoc(docFromUrl())
registerServiceWorker()
