// Entry point of web/vendor/yjs-bundle.js: everything the static pages import.
// One copy of yjs only (y-websocket and y-protocols import the same module),
// so `instanceof` checks inside Yjs keep working.
export * as Y from 'yjs'
export { WebsocketProvider } from 'y-websocket'
export * as awarenessProtocol from 'y-protocols/awareness'
