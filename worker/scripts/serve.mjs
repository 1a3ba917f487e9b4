#!/usr/bin/env node
// Runs the Worker on Miniflare for the Python end-to-end tests (harness/miniflare.py).
//
//   node scripts/serve.mjs --source-origin http://127.0.0.1:PORT
//   env: R2_FETCH_TOKEN (required), R2_RETENTION_HOURS (optional, default 24)
//
// The Worker listens on 127.0.0.1 (free port) with a local R2 bucket. Its outbound requests, e.g. for
// https://www.dropbox.com/..., are answered by the source origin (the Worker still checks the real URLs against its
// allow-list). A second loopback HTTP server serves the stored objects by key and is the Worker's
// R2_PUBLIC_BASE_URL, so a test can GET an r2_url and compare bytes. The first stdout line is JSON:
// {"url": "<worker>/", "public_base_url": "<object server>"}. Closing stdin (or SIGTERM/SIGINT) disposes
// Miniflare and exits 0.
import http from "node:http";
import { parseArgs } from "node:util";
import { startWorker } from "./rig.mjs";

const { values } = parseArgs({ options: { "source-origin": { type: "string" } } });
const sourceOrigin = values["source-origin"] ?? process.env.SOURCE_ORIGIN;
const token = process.env.R2_FETCH_TOKEN;
if (!sourceOrigin || !token) {
  console.error("serve.mjs: need --source-origin (or SOURCE_ORIGIN) and R2_FETCH_TOKEN in the environment");
  process.exit(2);
}

let bucket = null;
const objectServer = http.createServer(async (req, res) => {
  try {
    const key = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname.slice(1));
    const object = req.method === "GET" && bucket ? await bucket.get(key) : null;
    if (!object) {
      res.writeHead(req.method === "GET" ? 404 : 405, { "Content-Type": "text/plain" });
      res.end("not found");
      return;
    }
    const body = Buffer.from(await object.arrayBuffer());
    res.writeHead(200, {
      "Content-Type": object.httpMetadata?.contentType ?? "application/octet-stream",
      "Content-Disposition": object.httpMetadata?.contentDisposition ?? "attachment",
      "Content-Length": body.length,
    });
    res.end(body);
  } catch (err) {
    res.writeHead(500, { "Content-Type": "text/plain" });
    res.end(String(err));
  }
});
await new Promise((resolve) => objectServer.listen(0, "127.0.0.1", resolve));
const publicBaseUrl = `http://127.0.0.1:${objectServer.address().port}`;

const mf = startWorker({
  origin: sourceOrigin,
  bindings: {
    R2_FETCH_TOKEN: token,
    R2_PUBLIC_BASE_URL: publicBaseUrl,
    R2_RETENTION_HOURS: process.env.R2_RETENTION_HOURS || "24",
  },
});
const workerUrl = await mf.ready;
bucket = await mf.getR2Bucket("R2_BUCKET");
process.stdout.write(`${JSON.stringify({ url: workerUrl.href, public_base_url: publicBaseUrl })}\n`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  objectServer.closeAllConnections();
  objectServer.close();
  await mf.dispose();
  process.exit(0);
}
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
