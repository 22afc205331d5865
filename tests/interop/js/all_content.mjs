// Every kind of Yjs content, as the npm yjs encoder writes it: one JSON line per
// transaction's update (base64), then the whole state. Read by test_js_updates.py,
// which checks that crdt-sync's update check (crdt_sync.codec.check_update) accepts
// every one of them. No server: this only encodes.

import { Y, hardTimeout } from './lib.mjs'

hardTimeout(10000, 'all_content')
const emit = (event, update) =>
  console.log(JSON.stringify({ event, update: Buffer.from(update).toString('base64') }))

const doc = new Y.Doc()
doc.on('update', (update) => emit('update', update))
const text = doc.getText('body')
const fields = doc.getMap('fields')
const list = doc.getArray('list')
const xml = doc.getXmlFragment('xml')
text.insert(0, 'héllo wörld 😀 \u{1F469}\u200D\u{1F4BB}')
text.format(0, 5, { bold: true, link: { href: 'x' } })
text.insertEmbed(3, { image: 'cat.png' })
text.delete(1, 2)
fields.set('n', 42)
fields.set('neg', -7)
fields.set('big', 2 ** 53 - 1)
fields.set('f', 1.5)
fields.set('b', true)
fields.set('null', null)
fields.set('s', 'string')
fields.set('bytes', new Uint8Array([0, 1, 255]))
fields.set('obj', { a: [1, { b: [null, 'x'] }], c: {} })
fields.set('bigint', 12345678901234567890n)
fields.set('nested', new Y.Map([['k', 'v']]))
fields.set('sub', new Y.Doc({ meta: { kind: 'sub' } }))
list.insert(0, [1, 'two', { three: 3 }, [4], new Y.Text('inner')])
list.delete(1, 1)
const p = new Y.XmlElement('p')
p.setAttribute('class', 'c')
p.insert(0, [new Y.XmlText('para')])
xml.insert(0, [p, new Y.XmlText('tail')])
for (let i = 0; i < 200; i++) text.insert(text.length >> 1, `${i};`)
const other = new Y.Doc()
Y.applyUpdate(other, Y.encodeStateAsUpdate(doc))
other.getText('body').insert(0, 'concurrent ')
Y.applyUpdate(doc, Y.encodeStateAsUpdate(other, Y.encodeStateVector(doc)))
emit('state', Y.encodeStateAsUpdate(doc))
// yrs (pycrdt) cannot decode XmlHook content: checked, not applied.
const hooked = new Y.Doc()
hooked.getXmlFragment('xml').insert(0, [new Y.XmlHook('hook')])
emit('check_only', Y.encodeStateAsUpdate(hooked))
emit('merged', Y.mergeUpdates([Y.encodeStateAsUpdate(other), Y.encodeStateAsUpdate(doc)]))
