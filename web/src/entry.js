// Entry point of web/vendor/yjs-bundle.js: every npm export the static pages use.
// One copy of yjs only (y-websocket, y-protocols, y-indexeddb and y-codemirror.next
// import the same module), so `instanceof` checks inside Yjs keep working.
export * as Y from 'yjs'
export { WebsocketProvider } from 'y-websocket'
export * as awarenessProtocol from 'y-protocols/awareness'
export { IndexeddbPersistence } from 'y-indexeddb'
export { yCollab, yUndoManagerKeymap, yRemoteSelectionsTheme } from 'y-codemirror.next'
export { EditorState, Compartment } from '@codemirror/state'
export {
  EditorView,
  keymap,
  placeholder,
  drawSelection,
  highlightSpecialChars,
  highlightActiveLine
} from '@codemirror/view'
export { defaultKeymap } from '@codemirror/commands'
