// Drive the real npm tus-js-client (Node build) against a tus server.
//
// Usage: node tus_client.mjs '<json options>'
//   mode        "upload" (default) | "abort" | "resume"
//   endpoint    creation URL (upload, abort)
//   file        path of the file to upload (read as an fs.ReadStream)
//   chunkSize   bytes per PATCH (default 1 MiB)
//   parallel    parallelUploads (default 1; > 1 uses the concatenation extension)
//   storage     path of a FileUrlStorage JSON file (enables storing/finding upload URLs)
//   uploadUrl   resume this upload URL directly (mode "resume" without storage)
//   abortAt     mode "abort": abort once this many bytes were sent (mid-PATCH)
//   metadata    object of Upload-Metadata pairs
//   input       "file" (default: an fs.ReadStream, seekable), "stream" (a plain Readable
//               of unknown length) or "buffer"
//   deferLength         uploadLengthDeferred (creation-defer-length)
//   dataDuringCreation  uploadDataDuringCreation (creation-with-upload)
//   protocol    tus-js-client's `protocol`: "tus-v1" (default), "ietf-draft-03" (interop 5)
//               or "ietf-draft-05" (interop 6)
// Prints one JSON line: {ok, url, ...}; exit status 0 when ok.
import * as fs from 'node:fs'
import { PassThrough } from 'node:stream'
import * as tus from 'tus-js-client'

const opts = JSON.parse(process.argv[2] || '{}')
const mode = opts.mode || 'upload'
const chunkSize = opts.chunkSize || 1024 * 1024
const size = fs.statSync(opts.file).size

function done(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`)
  process.exit(result.ok ? 0 : 1)
}

const progress = { min: null, max: 0, calls: 0 }
const retries = []
const parallel = opts.parallel || 1
let upload
let aborting = false

const options = {
  endpoint: opts.endpoint,
  chunkSize,
  parallelUploads: parallel,
  uploadLengthDeferred: Boolean(opts.deferLength),
  uploadDataDuringCreation: Boolean(opts.dataDuringCreation),
  metadata: opts.metadata || {},
  protocol: opts.protocol || 'tus-v1',
  retryDelays: opts.retryDelays === undefined ? null : opts.retryDelays,
  storeFingerprintForResuming: Boolean(opts.storage),
  removeFingerprintOnSuccess: false,
  onShouldRetry(err, retryAttempt) {
    retries.push({ attempt: retryAttempt, status: err.originalResponse?.getStatus?.() ?? null })
    return true
  },
  onProgress(sent, total) {
    progress.calls += 1
    progress.min = progress.min === null ? sent : Math.min(progress.min, sent)
    progress.max = Math.max(progress.max, sent)
    if (mode === 'abort' && !aborting && sent >= opts.abortAt && (upload.url || parallel > 1)) {
      // abort(false): stop sending (the PATCH in flight is cut) but keep the upload.
      aborting = true
      upload.abort(false).then(() =>
        done({
          ok: true,
          aborted: true,
          url: upload.url,
          // tus-js-client keeps the partial uploads' URLs here (read only, for the checks)
          parallelUploadUrls: upload._parallelUploadUrls ?? null,
          sentAtAbort: sent,
          total,
        }),
      )
    }
  },
  onError(err) {
    done({ ok: false, error: String(err), url: upload?.url ?? null, retries })
  },
  onSuccess() {
    done({
      ok: mode !== 'abort',
      url: upload.url,
      parallelUploadUrls: upload._parallelUploadUrls ?? null,
      size,
      progress,
      retries,
      error: mode === 'abort' ? 'finished before it could be aborted' : undefined,
    })
  },
}
if (opts.storage) options.urlStorage = new tus.FileUrlStorage(opts.storage)
if (opts.uploadUrl) options.uploadUrl = opts.uploadUrl

function source() {
  if (opts.input === 'buffer') return fs.readFileSync(opts.file)
  if (opts.input === 'stream') return fs.createReadStream(opts.file).pipe(new PassThrough())
  return fs.createReadStream(opts.file)
}

upload = new tus.Upload(source(), options)

if (mode === 'resume' && !opts.uploadUrl) {
  const previous = await upload.findPreviousUploads()
  if (previous.length === 0) done({ ok: false, error: 'no previous upload found in storage' })
  upload.resumeFromPreviousUpload(previous[0])
  progress.previousUploads = previous.length
}
upload.start()
