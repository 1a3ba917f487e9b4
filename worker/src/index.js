/**
 * render-signal R2 fetch Worker.
 *
 * Copies one file-delivery link (Dropbox) into the R2 bucket bound as `R2_BUCKET`, for the render-signal service
 * (issue 7). `POST /` with `X-R2-FETCH-TOKEN` and a JSON body
 * `{"source_url", "object_key", "bucket", "provider", "email_id", "source_key"?, "max_bytes"?}` answers
 * `{"success": true, "r2_url", "object_key", "original_filename", "reused", ...}` or `{"success": false, "error"}`.
 * A policy refusal (the link's own outcome, not a Worker failure) is answered 403
 * `{"success": false, "error": "policy", "reason", "detail"}` with `reason` one of `scheme`, `userinfo`, `port`,
 * `host` (the source URL or a redirect hop), `too_large` (over the byte cap) or `key_conflict` (the object key holds
 * another link's copy: objects are never overwritten by another link).
 * Objects are keyed by the link's key form (`source_key`, the service's canonical form of the link; the source URL
 * when absent), kept in `customMetadata.sourceKey`: a live copy of the same link is answered without fetching.
 * A cron trigger (`scheduled`) deletes the objects whose `customMetadata.expiresAt` has passed.
 *
 * Environment: `R2_BUCKET` (R2 binding), `R2_FETCH_TOKEN` (secret), `R2_PUBLIC_BASE_URL` (optional var; without it
 * `r2_url` is null and the service presigns), `R2_RETENTION_HOURS` (var, default 24), `R2_MAX_BYTES` (var, default
 * 2 GiB; the request's `max_bytes` may only lower it).
 */

import {
  ALLOWED_HOST_SUFFIXES,
  buildContentDisposition,
  chooseFilename,
  objectKeyProblem,
  publicUrl,
  sourceUrlRefusal,
} from "./policy.js";

const MAX_REDIRECTS = 5;
const DEFAULT_RETENTION_HOURS = 24;
/** R2's minimum multipart part size; every part but the last has exactly this size (R2 wants equal parts). */
const MULTIPART_PART_BYTES = 5 * 1024 * 1024;
/** Above this a known length still goes through multipart: one R2 put is limited to about 5 GiB. */
const MAX_SINGLE_PUT_BYTES = 4 * 1024 * 1024 * 1024;
const MAX_FIELD_CHARS = 2048;
const MAX_REQUEST_BODY_BYTES = 16 * 1024;
const LIST_PAGE_SIZE = 1000;
const DELETE_BATCH_SIZE = 1000;
const TOKEN_HEADER = "X-R2-FETCH-TOKEN";
/** The largest copy stored unless R2_MAX_BYTES says otherwise: 2 GiB. */
const DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024;

/** A failure answered to the caller as `{"success": false, "error": message}` with `status`. */
class FetchError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  body() {
    return { success: false, error: this.message };
  }
}

/** A refusal by policy: answered 403 `{"error": "policy", "reason", "detail"}`, the link's outcome. */
class PolicyError extends FetchError {
  constructor(reason, detail) {
    super(403, "policy");
    this.reason = reason;
    this.detail = detail;
  }

  body() {
    return { success: false, error: "policy", reason: this.reason, detail: this.detail };
  }
}

export default {
  async fetch(request, env) {
    try {
      return await handleRequest(request, env);
    } catch (err) {
      if (err instanceof FetchError) {
        return jsonResponse(err.status, err.body());
      }
      console.error(`R2_FETCH: unexpected error: ${describeError(err)}`);
      return jsonResponse(500, { success: false, error: "internal error" });
    }
  },

  async scheduled(controller, env, ctx) {
    const result = await deleteExpiredObjects(env.R2_BUCKET, Date.now());
    console.log(`R2_CLEANUP: scanned=${result.scanned} deleted=${result.deleted} kept=${result.kept}`);
  },
};

async function handleRequest(request, env) {
  const url = new URL(request.url);
  if (url.pathname !== "/") {
    throw new FetchError(404, "not found: POST / is the only endpoint");
  }
  if (request.method !== "POST") {
    return jsonResponse(405, { success: false, error: "method not allowed: use POST" }, { Allow: "POST" });
  }
  if (typeof env.R2_FETCH_TOKEN !== "string" || env.R2_FETCH_TOKEN === "") {
    console.error("R2_FETCH: R2_FETCH_TOKEN is not configured (wrangler secret put R2_FETCH_TOKEN)");
    throw new FetchError(500, "worker not configured: R2_FETCH_TOKEN is missing");
  }
  if (!env.R2_BUCKET) {
    console.error("R2_FETCH: no R2 bucket bound as R2_BUCKET");
    throw new FetchError(500, "worker not configured: R2_BUCKET binding is missing");
  }
  const retentionHours = parseRetentionHours(env.R2_RETENTION_HOURS);
  const workerMaxBytes = parseMaxBytes(env.R2_MAX_BYTES);
  if (!(await tokenMatches(request.headers.get(TOKEN_HEADER), env.R2_FETCH_TOKEN))) {
    throw new FetchError(401, "unauthorized: missing or wrong X-R2-FETCH-TOKEN");
  }

  const job = await readJob(request);
  const maxBytes = job.maxBytes === null ? workerMaxBytes : Math.min(workerMaxBytes, job.maxBytes);
  const startedAt = Date.now();
  const existing = await liveCopyOf(env.R2_BUCKET, job, startedAt);
  if (existing !== null) {
    console.log(`R2_FETCH: reused key=${job.objectKey} provider=${job.provider} email_id=${job.emailId}`);
    return jsonResponse(200, {
      success: true,
      r2_url: publicUrl(env.R2_PUBLIC_BASE_URL, job.objectKey),
      object_key: job.objectKey,
      original_filename: existing.customMetadata?.originalFilename || chooseFilename(null, job.objectKey),
      size: existing.size,
      content_type: existing.httpMetadata?.contentType || "application/octet-stream",
      expires_at: existing.customMetadata?.expiresAt,
      reused: true,
    });
  }
  const source = await fetchSource(job.sourceUrl, job.provider);
  const declared = knownLength(source.headers);
  if (declared !== null && declared > maxBytes) {
    await discardBody(source);
    console.warn(`R2_FETCH: refused provider=${job.provider} email_id=${job.emailId}: ${declared} bytes > ${maxBytes}`);
    throw new PolicyError("too_large", `source announces ${declared} bytes, more than the ${maxBytes} allowed`);
  }
  const originalFilename = chooseFilename(source.headers.get("Content-Disposition"), job.objectKey);
  const expiresAt = new Date(startedAt + retentionHours * 3600 * 1000).toISOString();
  const options = {
    httpMetadata: {
      contentType: source.headers.get("Content-Type") || "application/octet-stream",
      contentDisposition: buildContentDisposition(originalFilename),
    },
    customMetadata: {
      sourceUrl: job.sourceUrl,
      sourceKey: job.sourceKey,
      originalFilename,
      provider: job.provider,
      emailId: job.emailId,
      expiresAt,
    },
  };
  let size;
  try {
    size = await storeBody(env.R2_BUCKET, job.objectKey, source, options, maxBytes);
  } catch (err) {
    if (err instanceof FetchError) throw err;
    // Either side can break mid-stream: the source connection or the R2 write. R2 keeps no partial object.
    console.error(`R2_FETCH: copying into ${job.objectKey} failed: ${describeError(err)}`);
    throw new FetchError(502, `copy into R2 failed: ${describeError(err)}`);
  }
  console.log(
    `R2_FETCH: stored key=${job.objectKey} provider=${job.provider} email_id=${job.emailId} ` +
      `bytes=${size} ms=${Date.now() - startedAt}`,
  );
  return jsonResponse(200, {
    success: true,
    r2_url: publicUrl(env.R2_PUBLIC_BASE_URL, job.objectKey),
    object_key: job.objectKey,
    original_filename: originalFilename,
    size,
    content_type: options.httpMetadata.contentType,
    expires_at: expiresAt,
    reused: false,
  });
}

/**
 * The stored object to answer instead of fetching: the same link's copy (same sourceKey), not yet expired. An
 * expired copy of the same link is replaced; an object holding another link's copy is never overwritten.
 */
async function liveCopyOf(bucket, job, now) {
  const object = await bucket.head(job.objectKey);
  if (object === null) return null;
  const storedKey = object.customMetadata?.sourceKey ?? object.customMetadata?.sourceUrl;
  if (storedKey !== job.sourceKey) {
    console.warn(`R2_FETCH: refused key=${job.objectKey} provider=${job.provider}: it holds another link's copy`);
    throw new PolicyError("key_conflict", "the object key holds another link's copy");
  }
  const expiresAt = Date.parse(object.customMetadata?.expiresAt ?? "");
  return Number.isFinite(expiresAt) && expiresAt > now ? object : null;
}

// --- authentication -------------------------------------------------------------------------------------------

/** Compares SHA-256 digests (always 32 bytes) so the comparison's time says nothing about the token. */
async function tokenMatches(given, expected) {
  if (given === null) return false;
  const encoder = new TextEncoder();
  const [a, b] = await Promise.all([
    crypto.subtle.digest("SHA-256", encoder.encode(given)),
    crypto.subtle.digest("SHA-256", encoder.encode(expected)),
  ]);
  return crypto.subtle.timingSafeEqual(a, b);
}

// --- request validation ---------------------------------------------------------------------------------------

async function readJob(request) {
  const contentType = (request.headers.get("Content-Type") || "").toLowerCase();
  if (!contentType.startsWith("application/json")) {
    throw new FetchError(415, "unsupported content type: send application/json");
  }
  const declared = Number(request.headers.get("Content-Length") || "0");
  if (declared > MAX_REQUEST_BODY_BYTES) {
    throw new FetchError(413, "request body too large");
  }
  const text = await request.text();
  if (text.length > MAX_REQUEST_BODY_BYTES) {
    throw new FetchError(413, "request body too large");
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new FetchError(400, "invalid JSON body");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new FetchError(400, "body must be a JSON object");
  }
  const provider = requireString(body, "provider").toLowerCase();
  if (!Object.hasOwn(ALLOWED_HOST_SUFFIXES, provider)) {
    throw new FetchError(400, `unsupported provider: ${provider}`);
  }
  const sourceUrl = requireString(body, "source_url");
  const objectKey = requireString(body, "object_key");
  const keyProblem = objectKeyProblem(objectKey);
  if (keyProblem) {
    throw new FetchError(400, `invalid object_key: ${keyProblem}`);
  }
  const emailId = requireString(body, "email_id", { allowEmpty: true });
  let sourceKey = null;
  if (body.source_key !== undefined && body.source_key !== null) sourceKey = requireString(body, "source_key");
  let maxBytes = null;
  if (body.max_bytes !== undefined && body.max_bytes !== null) {
    if (!Number.isSafeInteger(body.max_bytes) || body.max_bytes <= 0) {
      throw new FetchError(400, "invalid max_bytes: must be a positive integer");
    }
    maxBytes = body.max_bytes;
  }
  if (body.bucket !== undefined && body.bucket !== null && typeof body.bucket !== "string") {
    throw new FetchError(400, "invalid bucket: must be a string");
  }
  // The source URL is parsed and checked against the allow-list before anything is fetched.
  let parsed;
  try {
    parsed = new URL(sourceUrl);
  } catch {
    throw new FetchError(400, "invalid source_url: not an absolute URL");
  }
  const refusal = sourceUrlRefusal(parsed, provider);
  if (refusal) {
    console.warn(`R2_FETCH: refused source host=${JSON.stringify(parsed.hostname)} provider=${provider}: ${refusal.reason}`);
    throw new PolicyError(refusal.reason, `source_url refused: ${refusal.detail}`);
  }
  return { provider, sourceUrl: parsed.href, sourceKey: sourceKey ?? parsed.href, objectKey, emailId, maxBytes };
}

function requireString(body, name, { allowEmpty = false } = {}) {
  const value = body[name];
  if (typeof value !== "string" || (!allowEmpty && value.trim() === "")) {
    throw new FetchError(400, `missing or invalid field: ${name} (a non-empty string)`);
  }
  if (value.length > MAX_FIELD_CHARS) {
    throw new FetchError(400, `field too long: ${name}`);
  }
  return value;
}

function parseMaxBytes(raw) {
  if (raw === undefined || raw === null || String(raw).trim() === "") return DEFAULT_MAX_BYTES;
  const bytes = Number(String(raw).trim());
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    console.error(`R2_FETCH: R2_MAX_BYTES is not a positive integer: ${raw}`);
    throw new FetchError(500, "worker not configured: R2_MAX_BYTES must be a positive integer");
  }
  return bytes;
}

function parseRetentionHours(raw) {
  if (raw === undefined || raw === null || raw === "") return DEFAULT_RETENTION_HOURS;
  const hours = Number(raw);
  if (!Number.isFinite(hours) || hours <= 0) {
    console.error(`R2_FETCH: R2_RETENTION_HOURS is not a positive number: ${raw}`);
    throw new FetchError(500, "worker not configured: R2_RETENTION_HOURS must be a positive number");
  }
  return hours;
}

// --- fetching the source ----------------------------------------------------------------------------------------

/** GET the source, following up to MAX_REDIRECTS redirects by hand so each hop is checked against the allow-list. */
async function fetchSource(sourceUrl, provider) {
  let current = new URL(sourceUrl);
  for (let hop = 0; ; hop++) {
    let response;
    try {
      response = await fetch(current.href, {
        method: "GET",
        redirect: "manual",
        // An encoded body would be decoded by the runtime and no longer match Content-Length.
        headers: { "Accept-Encoding": "identity", "User-Agent": "render-signal-r2-fetch/1" },
      });
    } catch (err) {
      throw new FetchError(502, `source fetch failed: ${describeError(err)}`);
    }
    if (response.status >= 300 && response.status < 400 && response.headers.has("Location")) {
      await discardBody(response);
      if (hop >= MAX_REDIRECTS) {
        throw new FetchError(502, `too many redirects (more than ${MAX_REDIRECTS})`);
      }
      let next;
      try {
        next = new URL(response.headers.get("Location"), current);
      } catch {
        throw new FetchError(502, "source redirected to an invalid URL");
      }
      const refusal = sourceUrlRefusal(next, provider);
      if (refusal) {
        console.warn(
          `R2_FETCH: refused redirect from host=${JSON.stringify(current.hostname)} to ` +
            `host=${JSON.stringify(next.hostname)}: ${refusal.reason}`,
        );
        throw new PolicyError(refusal.reason, `redirect refused: ${refusal.detail}`);
      }
      current = next;
      continue;
    }
    if (response.status < 200 || response.status > 299) {
      await discardBody(response);
      throw new FetchError(502, `source answered ${response.status}`);
    }
    const mediaType = (response.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
    if (mediaType === "text/html" || mediaType === "application/xhtml+xml") {
      await discardBody(response);
      throw new FetchError(422, "source returned HTML, not a file");
    }
    if (response.body === null) {
      throw new FetchError(502, "source answered without a body");
    }
    return response;
  }
}

async function discardBody(response) {
  try {
    await response.body?.cancel();
  } catch {
    // Nothing to do: the body is not needed.
  }
}

// --- storing into R2 --------------------------------------------------------------------------------------------

/** Streams the source body into R2 and returns the number of bytes stored. */
async function storeBody(bucket, key, source, options, maxBytes) {
  const length = knownLength(source.headers);
  if (length !== null && length <= MAX_SINGLE_PUT_BYTES) {
    // R2 needs a known length: FixedLengthStream provides it, and errors if the source sends more or less.
    const fixed = new FixedLengthStream(length);
    const piping = source.body.pipeTo(fixed.writable);
    const [stored] = await Promise.all([bucket.put(key, fixed.readable, options), piping]);
    return stored.size;
  }
  return storeUnknownLength(bucket, key, source.body, options, maxBytes);
}

function knownLength(headers) {
  const encoding = (headers.get("Content-Encoding") || "identity").toLowerCase();
  const raw = headers.get("Content-Length");
  if (encoding !== "identity" || raw === null || !/^\d+$/.test(raw.trim())) return null;
  return Number(raw.trim());
}

/**
 * Without a length: a body smaller than one part is buffered and put at once; a larger one becomes a multipart
 * upload of MULTIPART_PART_BYTES parts, so memory stays at about one part whatever the size. Bytes are counted as
 * they arrive: past `maxBytes` the upload is aborted and nothing is stored (policy `too_large`).
 */
async function storeUnknownLength(bucket, key, body, options, maxBytes) {
  const chunks = new PartReader(body.getReader());
  const tooLarge = () =>
    new PolicyError("too_large", `source sent more than the ${maxBytes} bytes allowed`);
  const first = await chunks.read(Math.min(MULTIPART_PART_BYTES, maxBytes + 1));
  if (first.bytes.byteLength > maxBytes) {
    await chunks.cancel();
    throw tooLarge();
  }
  if (first.done) {
    const stored = await bucket.put(key, first.bytes, options);
    return stored.size;
  }
  const upload = await bucket.createMultipartUpload(key, options);
  try {
    const parts = [await upload.uploadPart(1, first.bytes)];
    let total = first.bytes.byteLength;
    for (let partNumber = 2; ; partNumber++) {
      const part = await chunks.read(MULTIPART_PART_BYTES);
      if (total + part.bytes.byteLength > maxBytes) throw tooLarge();
      if (part.bytes.byteLength > 0) {
        parts.push(await upload.uploadPart(partNumber, part.bytes));
        total += part.bytes.byteLength;
      }
      if (part.done) break;
    }
    await upload.complete(parts);
    return total;
  } catch (err) {
    try {
      await upload.abort();
    } catch (abortErr) {
      console.error(`R2_FETCH: aborting multipart upload of ${key} failed: ${describeError(abortErr)}`);
    }
    await chunks.cancel();
    throw err;
  }
}

/** Cuts a byte stream into parts of a fixed size; the bytes of a chunk beyond one part start the next. */
class PartReader {
  constructor(reader) {
    this.reader = reader;
    this.leftover = null;
    this.ended = false;
  }

  /** Up to `size` bytes; `done` is true when the stream ended (the bytes may then be fewer, even none). */
  async read(size) {
    const buffer = new Uint8Array(size);
    let filled = 0;
    while (filled < size) {
      let chunk = this.leftover;
      this.leftover = null;
      if (chunk === null) {
        if (this.ended) break;
        const { value, done } = await this.reader.read();
        if (done) {
          this.ended = true;
          break;
        }
        chunk = value instanceof Uint8Array ? value : new Uint8Array(value);
      }
      const take = Math.min(chunk.byteLength, size - filled);
      buffer.set(chunk.subarray(0, take), filled);
      filled += take;
      if (take < chunk.byteLength) this.leftover = chunk.subarray(take);
    }
    if (filled === size && this.leftover === null && !this.ended) {
      // Peek so that a body of exactly one part is put at once instead of as a one-part multipart upload.
      const { value, done } = await this.reader.read();
      if (done) this.ended = true;
      else this.leftover = value instanceof Uint8Array ? value : new Uint8Array(value);
    }
    return { bytes: buffer.subarray(0, filled), done: this.ended && this.leftover === null };
  }

  async cancel() {
    try {
      await this.reader.cancel();
    } catch {
      // Already errored or closed.
    }
  }
}

// --- responses and cleanup --------------------------------------------------------------------------------------

/** Deletes every object whose customMetadata.expiresAt is before `now`; objects without it are left alone. */
async function deleteExpiredObjects(bucket, now) {
  let cursor;
  let scanned = 0;
  let kept = 0;
  const expired = [];
  do {
    const page = await bucket.list({ limit: LIST_PAGE_SIZE, cursor, include: ["customMetadata"] });
    for (const object of page.objects) {
      scanned++;
      const expiresAt = Date.parse(object.customMetadata?.expiresAt ?? "");
      if (Number.isFinite(expiresAt) && expiresAt <= now) expired.push(object.key);
      else kept++;
    }
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  // Deleting after listing keeps the cursor valid: the listing is not changed under it.
  for (let i = 0; i < expired.length; i += DELETE_BATCH_SIZE) {
    await bucket.delete(expired.slice(i, i + DELETE_BATCH_SIZE));
  }
  return { scanned, deleted: expired.length, kept };
}

function jsonResponse(status, body, extraHeaders = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store", ...extraHeaders },
  });
}

function describeError(err) {
  return err instanceof Error ? err.message : String(err);
}
