// Drive Debian's chromium with playwright-core for tests/ops/test_browser.py.
// Usage: node browser.mjs '<json task>'; prints one JSON line with the step results.
// Task: {executablePath, steps: [{action: "uppy", url, file} | {action: "eval", url, src, args}]}
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const task = JSON.parse(process.argv[2])
const profile = mkdtempSync(join(tmpdir(), 'tusd-chromium-'))
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: task.executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const results = []
const consoleLines = []
try {
  for (const step of task.steps) {
    const page = await ctx.newPage()
    page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`))
    page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`))
    await page.goto(step.url)
    if (step.action === 'uppy') {
      // Drop a file into the Dashboard, press Upload, wait for Uppy's "complete".
      await page.waitForSelector('.uppy-Dashboard', { timeout: 10000 })
      const done = page.evaluate(() => new Promise((resolve) => {
        window.uppy.once('complete', (r) => resolve({
          successful: r.successful.map((f) => ({ name: f.name, size: f.size, uploadURL: f.uploadURL })),
          failed: r.failed.map((f) => ({ name: f.name, error: String(f.error) })),
        }))
      }))
      await page.setInputFiles('.uppy-Dashboard-input', step.file)
      await page.click('.uppy-StatusBar-actionBtn--upload', { timeout: 10000 })
      const result = await done
      result.statusComplete = await page.waitForSelector('.uppy-StatusBar.is-complete', { timeout: 5000 })
        .then(() => true, () => false)
      result.links = await page.$$eval('#log a', (as) => as.map((a) => a.href))
      results.push(result)
    } else if (step.action === 'eval') {
      results.push(await page.evaluate(async ({ src, args }) => {
        // eslint-disable-next-line no-new-func
        const fn = new Function('args', `return (async () => { ${src} })()`)
        return await fn(args)
      }, { src: step.src, args: step.args || {} }))
    } else {
      throw new Error(`unknown action ${step.action}`)
    }
    await page.close()
  }
} finally {
  await ctx.close()
  rmSync(profile, { recursive: true, force: true })
}
console.log(JSON.stringify({ results, console: consoleLines }))
