// Upload a few bytes with the real npm tus-js-client (Node build); print one JSON line.
// Usage: node js_upload.mjs <creation-url> '<json metadata>' '<json headers>'
import * as tus from 'tus-js-client'

const [endpoint, metadata = '{}', headers = '{}'] = process.argv.slice(2)
const upload = new tus.Upload(Buffer.from('hello from tus-js-client'), {
  endpoint,
  metadata: JSON.parse(metadata),
  headers: JSON.parse(headers),
  retryDelays: null,
  onError(err) {
    const res = err.originalResponse
    process.stdout.write(`${JSON.stringify({
      ok: false, message: err.message, status: res ? res.getStatus() : null,
      body: res ? res.getBody() : null,
    })}\n`)
  },
  onSuccess() {
    process.stdout.write(`${JSON.stringify({ ok: true, url: upload.url })}\n`)
  },
})
upload.start()
