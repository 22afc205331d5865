import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SseParser } from '../sse.js'

test('events split across chunks at any byte come out whole', () => {
  const stream = 'retry: 2000\n\nid: 1\ndata: {"sid":1}\n\n: keep-alive expires_in=5\n\nevent: error\ndata: {"error":"since_too_old"}\n\n'
  for (let cut = 0; cut < stream.length; cut++) {
    const parser = new SseParser()
    const events = [...parser.push(stream.slice(0, cut)), ...parser.push(stream.slice(cut))]
    assert.deepEqual(events, [
      { event: 'message', data: '{"sid":1}', id: '1' },
      { comment: 'keep-alive expires_in=5' },
      { event: 'error', data: '{"error":"since_too_old"}', id: undefined }
    ], `cut at ${cut}`)
  }
})

test('CRLF line ends and multi-line data', () => {
  const parser = new SseParser()
  assert.deepEqual(parser.push('data: a\r\ndata: b\r\n\r'), [])
  assert.deepEqual(parser.push('\n'), [{ event: 'message', data: 'a\nb', id: undefined }])
})
