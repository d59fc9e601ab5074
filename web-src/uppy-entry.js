// Entry for the demo bundle (tusd_py/web/uppy.single.js): Uppy's Dashboard + Tus plugin
// with their CSS inlined, so the demo page needs exactly one script. Rebuild with
// web-src/build.sh after changing this file or the @uppy/* pins in package.json.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'
import coreCss from '@uppy/core/css/style.min.css'
import dashboardCss from '@uppy/dashboard/css/style.min.css'

const style = document.createElement('style')
style.textContent = coreCss + dashboardCss
document.head.appendChild(style)

// The page says where the tus endpoint is: <div id="uppy" data-endpoint="./files/">,
// relative to the page, so it stays under a proxy's path prefix (/uploads/ -> /uploads/files/).
const target = document.getElementById('uppy')
const endpoint = new URL(target.dataset.endpoint || './files/', window.location.href).href
const shown = document.getElementById('endpoint')
if (shown) shown.textContent = endpoint
const chunkSize = Number(target.dataset.chunkSize || 5 * 1024 * 1024)

const uppy = new Uppy({ autoProceed: false })
  .use(Dashboard, { inline: true, target, proudlyDisplayPoweredByUppy: false, height: 420 })
  .use(Tus, { endpoint, chunkSize, retryDelays: [0, 1000, 3000] })

uppy.on('complete', (result) => {
  const log = document.getElementById('log')
  for (const file of result.successful || []) {
    const item = document.createElement('li')
    const link = document.createElement('a')
    link.href = file.uploadURL
    link.textContent = `${file.name} (${file.size} bytes)`
    item.appendChild(link)
    log.appendChild(item)
  }
})

// For scripts and tests driving the page.
window.uppy = uppy
