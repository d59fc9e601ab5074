// @tus/server with @tus/s3-store: the reference the S3 benchmark (bench/shaped.py) runs
// side by side with tusd-py, against the same S3 endpoint.
// Usage: node tus_s3_server.mjs PORT
// Env: S3_ENDPOINT, S3_BUCKET, S3_PREFIX (unused by the store: it writes at the bucket
//      root), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; PART_SIZE (bytes,
//      default 8 MiB, as tusd-py's); MAX_CONCURRENT_PART_UPLOADS (default: the store's, 60).
// Listens on 127.0.0.1:PORT, serves /files/ and /healthz; prints "listening <port>".
import http from 'node:http'
import { Server } from '@tus/server'
import { S3Store } from '@tus/s3-store'

const port = Number(process.argv[2] || 0)
const options = {
  partSize: Number(process.env.PART_SIZE || 8 * 1024 * 1024),
  s3ClientConfig: {
    bucket: process.env.S3_BUCKET,
    region: process.env.AWS_REGION || 'us-east-1',
    endpoint: process.env.S3_ENDPOINT,
    forcePathStyle: true,
    credentials: {
      accessKeyId: process.env.AWS_ACCESS_KEY_ID,
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
    },
  },
}
if (process.env.MAX_CONCURRENT_PART_UPLOADS) {
  options.maxConcurrentPartUploads = Number(process.env.MAX_CONCURRENT_PART_UPLOADS)
}
const tus = new Server({ path: '/files', datastore: new S3Store(options) })

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200).end('ok')
    return
  }
  tus.handle(req, res)
})
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`)
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)))
}
