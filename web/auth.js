// The access token of the bundled pages: taken from the URL fragment
// (`#token=…`, never sent to a server and removed from the address bar at once)
// or typed into the small token form, kept in sessionStorage (this tab only),
// and passed on every connection: `?token=` on WebSocket and EventSource URLs
// (browsers cannot set headers there), `Authorization: Bearer` on fetch.
// With no token the pages connect as before (a server running open).

const TOKEN_KEY = 'crdt-sync.token'
const listeners = new Set()
let memoryToken = null // if sessionStorage is blocked: this page only

function readStored () {
  try { return sessionStorage.getItem(TOKEN_KEY) } catch (_) { return memoryToken }
}

function writeStored (token) {
  memoryToken = token
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token)
    else sessionStorage.removeItem(TOKEN_KEY)
  } catch (_) {
    // storage disabled: memoryToken keeps it for this page
  }
}

/** Move `#token=…` from the address into sessionStorage; other fragment parts stay. */
function takeFromFragment () {
  const hash = window.location.hash.replace(/^#/, '')
  if (!hash) return
  const params = new URLSearchParams(hash)
  const token = params.get('token')
  if (token === null) return
  params.delete('token')
  const url = new URL(window.location.href)
  url.hash = params.toString()
  // replaceState: the token is not left in this history entry either.
  window.history.replaceState(window.history.state, '', url)
  if (token.trim()) writeStored(token.trim())
}

takeFromFragment()

/** The current token, or null. */
export function getToken () {
  return readStored() || null
}

/** Set (or with an empty value clear) the token; listeners reconnect with it. */
export function setToken (token) {
  const value = (token || '').trim() || null
  if (value === getToken()) return
  writeStored(value)
  for (const listener of listeners) listener(value)
}

export function onTokenChange (listener) {
  listeners.add(listener)
  return () => listeners.delete(listener)
}

/** `url` (a URL) with `?token=` set when there is a token; returns it. */
export function withToken (url) {
  const token = getToken()
  if (token) url.searchParams.set('token', token)
  else url.searchParams.delete('token')
  return url
}

/** Query parameters for y-websocket's `params` option: `{token}` or `{}`. */
export function tokenParams () {
  const token = getToken()
  return token ? { token } : {}
}

/** `headers` plus `Authorization: Bearer <token>` when there is a token. */
export function authHeaders (headers = {}) {
  const token = getToken()
  return token ? { ...headers, Authorization: `Bearer ${token}` } : { ...headers }
}

/** When a JWT expires (ms since epoch), for display only: the server decides. */
export function tokenExpiry (token) {
  try {
    const payload = token.split('.')[1]
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'))
    const exp = JSON.parse(json).exp
    return typeof exp === 'number' ? exp * 1000 : null
  } catch (_) {
    return null
  }
}

/** Whose token this is, `org/sub` from a JWT's payload (for display and for keeping
 * one identity's queued changes apart from another's); `open` without a token, `token`
 * for one that is not a readable JWT. The server decides who a token really is. */
export function tokenIdentity (token = getToken()) {
  if (!token) return 'open'
  try {
    const payload = token.split('.')[1]
    const claims = JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/')))
    if (typeof claims.sub === 'string') return `${claims.org ?? 'default'}/${claims.sub}`
  } catch (_) {}
  return 'token'
}

/** Close codes and HTTP statuses that mean "a (fresh) token is needed". */
export const AUTH_CLOSE_CODES = new Set([4401, 4403])
export const AUTH_STATUSES = new Set([401, 403])

/**
 * Wire the token form of a page: `#token-form` with `#token-input`, `#token-clear`
 * and `#token-state`. `needed(why)` (returned) shows the form as asking for a token.
 */
export function bindTokenForm () {
  const form = document.querySelector('#token-form')
  if (!form) return { needed () {} }
  const input = form.querySelector('#token-input')
  const clear = form.querySelector('#token-clear')
  const state = form.querySelector('#token-state')

  function render (why) {
    const token = getToken()
    form.dataset.token = token ? 'set' : 'none'
    clear.hidden = !token
    if (why) {
      form.dataset.needed = 'true'
      state.textContent = why
      return
    }
    delete form.dataset.needed
    if (!token) {
      state.textContent = 'No token (open server)'
      return
    }
    const exp = tokenExpiry(token)
    if (exp === null) state.textContent = 'Token set'
    else if (exp <= Date.now()) state.textContent = 'Token expired'
    else state.textContent = `Token set, expires ${new Date(exp).toLocaleString()}`
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const value = input.value.trim()
    input.value = ''
    if (value) setToken(value)
    render()
  })
  clear.addEventListener('click', () => {
    setToken(null)
    render()
  })
  render()
  return {
    needed (why) {
      render(why)
      input.focus()
    }
  }
}
