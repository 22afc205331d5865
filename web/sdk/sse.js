// Server-Sent Events read over a fetch() stream (works in browsers and Node >= 18):
// unlike EventSource it can send `Authorization: Bearer`, and it reports the HTTP
// status of a refused stream instead of retrying blindly.

/**
 * One parsed event. `comment` is set for a comment line (`: keep-alive ...`).
 * @typedef {object} SseEvent
 * @property {string} [event] The `event:` name (`message` if none).
 * @property {string} [data] The joined `data:` lines.
 * @property {string} [id] The `id:` field.
 * @property {string} [comment] The text of a comment line.
 */

/**
 * An incremental parser: feed it text chunks, get complete events back.
 * (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
 */
export class SseParser {
  constructor () {
    this.buffer = ''
    /** @type {{event?: string, data: string[], id?: string}} */
    this.pending = { data: [] }
  }

  /**
   * @param {string} chunk
   * @returns {SseEvent[]}
   */
  push (chunk) {
    this.buffer += chunk
    /** @type {SseEvent[]} */
    const events = []
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer)
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (!match || (match[0] === '\r' && match.index === this.buffer.length - 1)) break
      const line = this.buffer.slice(0, match.index)
      this.buffer = this.buffer.slice(match.index + match[0].length)
      this._line(line, events)
    }
    return events
  }

  /**
   * @param {string} line
   * @param {SseEvent[]} events
   */
  _line (line, events) {
    if (line === '') {
      const { event, data, id } = this.pending
      if (data.length) events.push({ event: event || 'message', data: data.join('\n'), id })
      this.pending = { data: [] }
      return
    }
    if (line.startsWith(':')) {
      events.push({ comment: line.slice(1).trimStart() })
      return
    }
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'data') this.pending.data.push(value)
    else if (field === 'event') this.pending.event = value
    else if (field === 'id') this.pending.id = value
    // `retry:` is ignored: the client's own backoff decides when to come back.
  }
}
