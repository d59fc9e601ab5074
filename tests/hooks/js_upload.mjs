// Upload a few bytes with the real npm tus-js-client (Node build); print one JSON line.
// Usage: node js_upload.mjs <creation-url> '<json metadata>' '<json headers>' ['<json options>']
// options: {chunkSize, read: [header names to read from the final PATCH's response]}
import * as tus from 'tus-js-client'

const [endpoint, metadata = '{}', headers = '{}', options = '{}'] = process.argv.slice(2)
const { chunkSize, read = [] } = JSON.parse(options)
const seen = []
const upload = new tus.Upload(Buffer.from('hello from tus-js-client'), {
  endpoint,
  metadata: JSON.parse(metadata),
  headers: JSON.parse(headers),
  retryDelays: null,
  ...(chunkSize ? { chunkSize } : {}),
  onAfterResponse(req, res) {
    seen.push({ method: req.getMethod(), url: req.getURL(), status: res.getStatus() })
  },
  onError(err) {
    const res = err.originalResponse
    process.stdout.write(`${JSON.stringify({
      ok: false, message: err.message, status: res ? res.getStatus() : null,
      body: res ? res.getBody() : null,
    })}\n`)
  },
  onSuccess({ lastResponse }) {
    const finalHeaders = Object.fromEntries(read.map((name) => [name, lastResponse.getHeader(name) ?? null]))
    process.stdout.write(`${JSON.stringify({
      ok: true, url: upload.url, requests: seen, finalStatus: lastResponse.getStatus(),
      finalBody: lastResponse.getBody() ?? null, finalHeaders,
    })}\n`)
  },
})
upload.start()
