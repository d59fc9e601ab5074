// @tus/server (Node) with a FileStore, for the client interop tests.
// Usage: node tus_node_server.mjs PORT DIRECTORY
// Listens on 127.0.0.1:PORT, serves /files/, prints "listening <port>" when ready.
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const port = Number(process.argv[2] || 0)
const directory = process.argv[3]
if (!directory) {
  console.error('usage: node tus_node_server.mjs PORT DIRECTORY')
  process.exit(2)
}

const server = new Server({
  path: '/files',
  datastore: new FileStore({ directory }),
})

const http = server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${http.address().port}`)
})

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => http.close(() => process.exit(0)))
}
