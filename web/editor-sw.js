// Service worker of the editor page: keeps the page's own files so that the editor
// opens (and shows the local copy from IndexedDB) while the server is away.
// Network first: whenever the server answers, its files are used and cached again,
// so a new version is picked up on the next load; only when it does not answer are
// the cached files served. Requests for anything else are not touched.
const CACHE = 'crdt-sync-editor-v1'
const FILES = ['./', './index.html', './editor.js', './style.css', './auth.js', './vendor/yjs-bundle.js']
const scope = new URL('./', self.location.href)
const OWN = new Set(FILES.map((file) => new URL(file, scope).pathname))

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches.open(CACHE)
      .then((cache) => cache.addAll(FILES))
      .then(() => self.skipWaiting())
  )
})

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((key) => key.startsWith('crdt-sync-editor-') && key !== CACHE).map((key) => caches.delete(key))))
      .then(() => self.clients.claim())
  )
})

self.addEventListener('fetch', (event) => {
  const request = event.request
  const url = new URL(request.url)
  if (request.method !== 'GET' || url.origin !== scope.origin || !OWN.has(url.pathname)) return
  // The editor's address carries ?doc=…: one cached copy of the page serves every doc.
  const key = new URL(url.pathname, url.origin).href
  event.respondWith((async () => {
    try {
      const response = await fetch(request)
      if (response.ok) {
        const cache = await caches.open(CACHE)
        await cache.put(key, response.clone())
      }
      return response
    } catch (error) {
      const cached = await caches.match(key)
      if (cached) return cached
      throw error
    }
  })())
})
