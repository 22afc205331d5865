// Build web/vendor/yjs-bundle.js: one minified ES module holding every npm
// package the editor page imports (yjs, y-websocket, y-protocols, lib0,
// y-indexeddb, y-codemirror.next, CodeMirror 6). One copy of each, so Yjs'
// `instanceof` checks hold across the bindings.
//
//   npm ci && npm run build              -> vendor/yjs-bundle.js (committed)
//   npm run build -- /tmp/out/bundle.js  -> somewhere else (the staleness test)
//
// Deterministic: the same package-lock.json gives a byte-identical file (the
// banner's versions and licences are read from the lock file, nothing else
// varies).
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const here = dirname(fileURLToPath(import.meta.url))
const outfile = resolve(process.argv[2] ?? resolve(here, 'vendor/yjs-bundle.js'))
const lock = JSON.parse(readFileSync(resolve(here, 'package-lock.json'), 'utf8'))

// Every package that can end up in the bundle: the lock's non-dev entries.
const bundled = Object.entries(lock.packages)
  .filter(([path, entry]) => path.startsWith('node_modules/') && !entry.dev)
  .map(([path, entry]) => `${path.slice(path.lastIndexOf('node_modules/') + 13)} ${entry.version} (${entry.license})`)
  .sort()

const banner = [
  '/*! crdt-sync web bundle, generated from web/src/entry.js by `npm run build` in web/',
  ' * (see web/README.md); do not edit. Bundled packages and their licences:',
  ...bundled.map((line) => ` *   ${line}`),
  ' * Licence comments of the sources follow at the end of this file. */'
].join('\n')

await build({
  absWorkingDir: here,
  entryPoints: ['src/entry.js'],
  outfile,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2020',
  minify: true,
  legalComments: 'eof',
  charset: 'utf8',
  banner: { js: banner },
  logLevel: 'warning'
})
