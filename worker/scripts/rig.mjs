// Rig for running the Worker locally (node tests and scripts/serve.mjs): the Worker on Miniflare with a local R2
// bucket, its outbound requests routed to a loopback server playing Dropbox (the Worker's allow-list is untouched:
// it still sees and checks the https Dropbox URLs), and a node:http source server for the tests.
// Kept outside test/ because `node --test test/` runs every module in that folder as a test file.
import { createHash } from "node:crypto";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const here = path.dirname(fileURLToPath(import.meta.url));
export const WORKER_DIR = path.resolve(here, "..");
export const COMPATIBILITY_DATE = "2025-09-01";
export const TOKEN = "test-token-7f3a";
export const PUBLIC_BASE = "https://files.example.test/r2";
/**
 * How Miniflare types the Worker's modules, as wrangler does (wrangler.toml [[rules]]): the .js files are ES modules
 * (Miniflare would otherwise read them as CommonJS), and src/providers.generated.json is a Text module that
 * src/policy.js parses. Miniflare has no JSON module type, and workerd refuses `with { type: "json" }`.
 */
export const MODULE_RULES = Object.freeze([
  Object.freeze({ type: "ESModule", include: Object.freeze(["**/*.js"]) }),
  Object.freeze({ type: "Text", include: Object.freeze(["**/*.json"]) }),
]);

/**
 * A node:http server on 127.0.0.1 answering from `routes`: path → handler(req, res). Every request it gets is
 * recorded (with the host the Worker asked for) in `requests`.
 */
export async function startSourceServer(routes) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    requests.push({ host: req.headers["x-original-host"], path: url.pathname, method: req.method });
    const handler = routes[url.pathname];
    if (!handler) {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("no such file");
      return;
    }
    handler(req, res);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/**
 * Miniflare's outbound service: every fetch the Worker makes is answered by `origin` instead of the internet, with
 * the requested host in X-Original-Host. A plain HTTP proxy (node:http): redirects pass back as they are for the
 * Worker to judge, bodies stream through unchanged (with or without Content-Length), and a source connection that
 * breaks breaks the Worker's too.
 */
export function routeOutboundTo(origin, seen = []) {
  const upstream = new URL(origin);
  return {
    node: (req, res) => {
      const target = new URL(req.url, `https://${req.headers.host}`);
      seen.push(target.href);
      const headers = { ...req.headers, host: upstream.host, "x-original-host": target.host };
      const proxied = http.request(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: `${target.pathname}${target.search}`, headers },
        (answer) => {
          res.writeHead(answer.statusCode, answer.rawHeaders);
          answer.pipe(res);
          answer.on("aborted", () => res.destroy());
          answer.on("error", () => res.destroy());
        },
      );
      proxied.on("error", () => res.destroy());
      req.pipe(proxied);
    },
  };
}

/**
 * The Worker on Miniflare (not yet ready: await `mf.ready`), outbound requests answered by `origin`. `workerDir`
 * (default: this Worker) is a folder laid out like worker/, for a test that runs a copy with other provider data.
 */
export function startWorker({ origin, bindings = {}, seen, port = 0, workerDir = WORKER_DIR } = {}) {
  const mf = new Miniflare({
    modules: true,
    scriptPath: path.join(workerDir, "src", "index.js"),
    modulesRoot: workerDir,
    modulesRules: MODULE_RULES.map((rule) => ({ type: rule.type, include: [...rule.include] })),
    compatibilityDate: COMPATIBILITY_DATE,
    host: "127.0.0.1",
    port,
    cf: false,
    r2Buckets: ["R2_BUCKET"],
    r2Persist: false,
    // A binding set to undefined is left out, as an unset variable or secret would be.
    bindings: Object.fromEntries(
      Object.entries({ R2_FETCH_TOKEN: TOKEN, R2_PUBLIC_BASE_URL: PUBLIC_BASE, R2_RETENTION_HOURS: "24", ...bindings })
        .filter(([, value]) => value !== undefined),
    ),
    outboundService: routeOutboundTo(origin ?? "http://127.0.0.1:9", seen),
  });
  return mf;
}

/** POST a job to the Worker; returns { status, body } with the JSON body parsed. */
export async function postJob(mf, job, { token = TOKEN, headers = {} } = {}) {
  const requestHeaders = { "Content-Type": "application/json", ...headers };
  if (token !== null) requestHeaders["X-R2-FETCH-TOKEN"] = token;
  const response = await mf.dispatchFetch("http://worker.local/", {
    method: "POST",
    headers: requestHeaders,
    body: typeof job === "string" ? job : JSON.stringify(job),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

/**
 * A copy request; without an `object_key` it gets one derived from its link (as the service derives it from the
 * key form), so that jobs for different links never share an object by accident.
 */
export function job(overrides = {}) {
  const body = {
    source_url: "https://www.dropbox.com/scl/fi/abc123/report.pdf?rlkey=k&dl=1",
    bucket: "render-signal",
    provider: "dropbox",
    email_id: "email-123",
    ...overrides,
  };
  if (body.object_key === undefined) {
    const digest = createHash("sha256").update(String(body.source_key ?? body.source_url)).digest("hex");
    body.object_key = `dropbox/${digest.slice(0, 8)}/${digest.slice(8, 16)}/file.pdf`;
  }
  return body;
}

/** Deterministic pseudo-random bytes, so a stored copy can be compared byte for byte. */
export function makeBytes(size, seed = 1) {
  const bytes = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}
