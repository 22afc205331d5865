// Scenario: one y-websocket editor talking to the Python client (the test).
//
//   node js_python.mjs WS_BASE ROOM
//
// 1. JS shows user 'js' in awareness, writes body 'js says hi' and
//    fields.from_js, prints 'wrote';
// 2. waits for the Python client's edits (body ends with ' py says hi',
//    fields.from_py) and its awareness user 'py', prints 'saw_python';
// 3. answers with fields.reply = 'js saw py' and prints 'final' with its
//    content, which the Python client must then reach.
import {
  content, emit, hardTimeout, leave, openClient, parseArgs, remoteUsers, run, synced, waitFor
} from './lib.mjs'

hardTimeout(20000, 'js_python')
const { base, room } = parseArgs()

run(async () => {
  const js = openClient(base, room, { name: 'js' })
  const awareness = js.provider.awareness
  awareness.setLocalStateField('user', { name: 'js' })
  await synced(js)
  js.doc.transact(() => {
    js.doc.getText('body').insert(0, 'js says hi')
    js.doc.getMap('fields').set('from_js', 'yes')
  })
  emit('wrote', content(js.doc))

  await waitFor(
    () => js.doc.getMap('fields').get('from_py') === 'yes' &&
      js.doc.getText('body').toString().endsWith(' py says hi'),
    'the Python client\'s edits', 15000, () => JSON.stringify(content(js.doc)))
  await waitFor(
    () => Object.values(remoteUsers(awareness, js.doc.clientID)).includes('py'),
    'the Python client\'s awareness state', 5000,
    () => JSON.stringify(remoteUsers(awareness, js.doc.clientID)))
  emit('saw_python', { ...content(js.doc), users: remoteUsers(awareness, js.doc.clientID) })

  js.doc.getMap('fields').set('reply', 'js saw py')
  emit('final', { ...content(js.doc), closes: js.closes.length })
  await leave(js)
})
