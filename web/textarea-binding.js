// A minimal two-way binding between a Y.Text and a plain <textarea>.
//
// Local edits: on every `input` event the old and new values are compared
// (common prefix and suffix) and the difference is applied to the Y.Text as
// one delete + one insert inside a single transaction.
// Remote edits: the Y.Text observer rewrites the textarea and moves the local
// selection through the event's delta, so the caret stays where the user put it.
//
// Offsets are UTF-16 code units on both sides (JavaScript string indexes and
// Y.Text indexes agree), but a diff must never cut a surrogate pair in half:
// Yjs would have to encode a lone surrogate, which UTF-8 cannot carry.

const isHighSurrogate = (code) => code >= 0xd800 && code <= 0xdbff
const isLowSurrogate = (code) => code >= 0xdc00 && code <= 0xdfff

/**
 * The single edit that turns `before` into `after`.
 * @param {string} before
 * @param {string} after
 * @returns {{index: number, remove: number, insert: string}}
 */
export function diff (before, after) {
  const max = Math.min(before.length, after.length)
  let prefix = 0
  while (prefix < max && before.charCodeAt(prefix) === after.charCodeAt(prefix)) prefix++
  if (prefix > 0 && isHighSurrogate(before.charCodeAt(prefix - 1))) prefix--

  let suffix = 0
  while (
    suffix < max - prefix &&
    before.charCodeAt(before.length - 1 - suffix) === after.charCodeAt(after.length - 1 - suffix)
  ) suffix++
  if (suffix > 0 && isLowSurrogate(before.charCodeAt(before.length - suffix))) suffix--

  return {
    index: prefix,
    remove: before.length - prefix - suffix,
    insert: after.slice(prefix, after.length - suffix)
  }
}

/**
 * Where `offset` ends up after a Y.Text delta is applied.
 * An insertion exactly at `offset` leaves it in front of the inserted text.
 * @param {number} offset
 * @param {Array<{retain?: number, insert?: string|object, delete?: number}>} delta
 * @returns {number}
 */
export function transformOffset (offset, delta) {
  let index = 0 // position in the document as the delta is walked
  for (const op of delta) {
    if (index > offset) break
    if (op.retain !== undefined) {
      index += op.retain
    } else if (op.insert !== undefined) {
      const length = typeof op.insert === 'string' ? op.insert.length : 1
      if (index < offset) offset += length
      index += length
    } else if (op.delete !== undefined) {
      if (index < offset) offset -= Math.min(op.delete, offset - index)
    }
  }
  return offset
}

/**
 * Keep `textarea` and `ytext` equal in both directions.
 * @param {import('./vendor/yjs-bundle.js').Y.Text} ytext
 * @param {HTMLTextAreaElement} textarea
 * @param {{onRemoteChange?: () => void}} [options]
 * @returns {{origin: object, destroy: () => void}}
 */
export function bindTextarea (ytext, textarea, { onRemoteChange } = {}) {
  // Transactions made by this binding carry this origin so the observer skips them.
  const origin = { binding: 'textarea' }
  let value = ytext.toString()
  textarea.value = value

  const onInput = () => {
    const next = textarea.value
    if (next === value) return
    const { index, remove, insert } = diff(value, next)
    value = next
    ytext.doc.transact(() => {
      if (remove > 0) ytext.delete(index, remove)
      if (insert.length > 0) ytext.insert(index, insert)
    }, origin)
  }

  const observer = (event, transaction) => {
    if (transaction.origin === origin) return
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    const start = transformOffset(selectionStart, event.delta)
    const end = transformOffset(selectionEnd, event.delta)
    value = ytext.toString()
    textarea.value = value
    textarea.setSelectionRange(start, end, selectionDirection)
    textarea.scrollTop = scrollTop
    if (onRemoteChange) onRemoteChange()
  }

  textarea.addEventListener('input', onInput)
  ytext.observe(observer)
  return {
    origin,
    destroy () {
      textarea.removeEventListener('input', onInput)
      ytext.unobserve(observer)
    }
  }
}
