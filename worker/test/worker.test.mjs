// The Worker on Miniflare (workerd) with a local R2 bucket; a loopback node:http server plays Dropbox.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { job, makeBytes, postJob, PUBLIC_BASE, startSourceServer, startWorker } from "../scripts/rig.mjs";

const PDF = makeBytes(300_000, 7);
const STREAMED = makeBytes(1_234_567, 11);
const LARGE_STREAMED = makeBytes(11 * 1024 * 1024 + 12_345, 13); // three multipart parts: 5 MiB, 5 MiB, rest
// A watchdog per suite: a Worker waiting on a stalled stream must fail the run, not hang it.
const TEST_TIMEOUT_MS = 30_000;
const MiB = 1024 * 1024;
const EDGE_SIZES = [5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 10 * MiB]; // around the 5 MiB part size
const EDGE_BODIES = new Map(EDGE_SIZES.map((size) => [size, makeBytes(size, size % 251)]));
const HTML = Buffer.from("<!doctype html><html><body>Download your files</body></html>");

function sendFile(bytes, headers = {}) {
  return (req, res) => {
    res.writeHead(200, { "Content-Type": "application/pdf", "Content-Length": bytes.length, ...headers });
    res.end(bytes);
  };
}

function redirectTo(location, status = 302) {
  return (req, res) => {
    res.writeHead(status, { Location: location });
    res.end();
  };
}

/**
 * Writes the body without Content-Length (chunked transfer encoding), in chunks of an odd size so that chunks
 * straddle the Worker's 5 MiB part boundaries.
 */
function streamFile(bytes, contentType = "application/zip", chunkSize = 100_003) {
  return async (req, res) => {
    res.writeHead(200, { "Content-Type": contentType });
    for (let offset = 0; offset < bytes.length; offset += chunkSize) {
      if (!res.write(bytes.subarray(offset, offset + chunkSize))) {
        await new Promise((resolve) => res.once("drain", resolve));
      }
    }
    res.end();
  };
}

const routes = {
  "/scl/fi/abc123/report.pdf": redirectTo("https://uc9f2.dl.dropboxusercontent.com/cd/0/get/report"),
  "/cd/0/get/report": sendFile(PDF, {
    "Content-Disposition": `attachment; filename="Rapport final.pdf"; filename*=UTF-8''Rapport%20d%C3%A9finitif.pdf`,
  }),
  "/s/plain/photo.jpg": sendFile(PDF, { "Content-Type": "image/jpeg", "Content-Disposition": 'inline; filename="photo 1.jpg"' }),
  "/s/noname/data.bin": sendFile(PDF, { "Content-Type": "application/octet-stream" }),
  "/s/relative/hop": redirectTo("/s/relative/target", 301),
  "/s/relative/target": sendFile(PDF),
  "/s/foreign/redirect": redirectTo("https://evil.example/steal"),
  "/s/http/redirect": redirectTo("http://dl.dropboxusercontent.com/cd/0/get/report"),
  "/s/loop": redirectTo("https://www.dropbox.com/s/loop"),
  "/s/landing/page": (req, res) => {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Content-Length": HTML.length });
    res.end(HTML);
  },
  "/scl/fo/folder/streamed": streamFile(STREAMED),
  "/scl/fo/folder/large": streamFile(LARGE_STREAMED),
  ...Object.fromEntries(EDGE_SIZES.map((size) => [`/scl/fo/edge/${size}`, streamFile(EDGE_BODIES.get(size))])),
  "/s/short/body": (req, res) => {
    // Announces more bytes than it sends, then closes: the copy must fail, not store a truncated file.
    res.writeHead(200, { "Content-Type": "application/pdf", "Content-Length": 1000 });
    res.write(PDF.subarray(0, 10));
    setTimeout(() => res.destroy(), 20);
  },
  "/s/server/error": (req, res) => {
    res.writeHead(500, { "Content-Type": "text/plain" });
    res.end("boom");
  },
};

let source;
let mf;
let seen;
let bucket;

before(async () => {
  source = await startSourceServer(routes);
  seen = [];
  mf = startWorker({ origin: source.origin, seen });
  await mf.ready;
  bucket = await mf.getR2Bucket("R2_BUCKET");
});

after(async () => {
  await mf?.dispose();
  await source?.close();
});

async function storedBytes(key) {
  const object = await bucket.get(key);
  assert.ok(object, `object ${key} is stored`);
  return { object, bytes: Buffer.from(await object.arrayBuffer()) };
}

describe("copying a Dropbox file into R2", { timeout: TEST_TIMEOUT_MS }, () => {
  test("it stores the source bytes with metadata and answers the public r2_url", async () => {
    const key = "dropbox/0a1b2c3d/4e5f6a7b/report.pdf";
    const before = Date.now();

    const { status, body } = await postJob(mf, job({ object_key: key, email_id: "email-42" }));

    assert.equal(status, 200, JSON.stringify(body));
    assert.deepEqual(
      { success: body.success, r2_url: body.r2_url, object_key: body.object_key, name: body.original_filename },
      { success: true, r2_url: `${PUBLIC_BASE}/${key}`, object_key: key, name: "Rapport définitif.pdf" },
    );
    const { object, bytes } = await storedBytes(key);
    assert.ok(bytes.equals(PDF), "stored bytes equal the source");
    assert.equal(object.httpMetadata.contentType, "application/pdf");
    assert.equal(
      object.httpMetadata.contentDisposition,
      `attachment; filename="Rapport d_finitif.pdf"; filename*=UTF-8''Rapport%20d%C3%A9finitif.pdf`,
    );
    const meta = object.customMetadata;
    assert.equal(meta.sourceUrl, job().source_url);
    assert.equal(meta.provider, "dropbox");
    assert.equal(meta.emailId, "email-42");
    const expiresIn = Date.parse(meta.expiresAt) - before;
    assert.ok(Math.abs(expiresIn - 24 * 3600 * 1000) < 60_000, `expiresAt is 24 h ahead, got ${meta.expiresAt}`);
    assert.equal(body.expires_at, meta.expiresAt);
  });

  test("it follows a redirect within the allow-list and re-checks every hop", async () => {
    const hostsBefore = seen.length;

    const { status, body } = await postJob(mf, job({ object_key: "dropbox/1/2/hop.pdf" }));

    assert.equal(status, 200, JSON.stringify(body));
    assert.deepEqual(seen.slice(hostsBefore).map((u) => new URL(u).host), [
      "www.dropbox.com",
      "uc9f2.dl.dropboxusercontent.com",
    ]);
  });

  test("it resolves a relative Location against the current hop", async () => {
    const url = "https://dl.dropboxusercontent.com/s/relative/hop";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/1/2/rel.pdf" }));

    assert.equal(status, 200, JSON.stringify(body));
    assert.ok((await storedBytes("dropbox/1/2/rel.pdf")).bytes.equals(PDF));
  });

  test("it takes the plain filename when there is no filename*, else the key's last segment", async () => {
    const withName = await postJob(
      mf,
      job({ source_url: "https://www.dropbox.com/s/plain/photo.jpg?dl=1", object_key: "dropbox/a/b/photo.jpg" }),
    );
    const withoutName = await postJob(
      mf,
      job({ source_url: "https://www.dropbox.com/s/noname/data.bin?dl=1", object_key: "dropbox/a/b/data.bin" }),
    );

    assert.equal(withName.body.original_filename, "photo 1.jpg");
    const photo = (await storedBytes("dropbox/a/b/photo.jpg")).object;
    assert.equal(photo.httpMetadata.contentType, "image/jpeg");
    assert.equal(photo.httpMetadata.contentDisposition, `attachment; filename="photo 1.jpg"; filename*=UTF-8''photo%201.jpg`);
    assert.equal(withoutName.body.original_filename, "data.bin");
  });

  test("it stores a source without Content-Length (buffered below one part)", async () => {
    const url = "https://www.dropbox.com/scl/fo/folder/streamed?rlkey=x&dl=1";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/c/d/folder.zip" }));

    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.size, STREAMED.length);
    const { object, bytes } = await storedBytes("dropbox/c/d/folder.zip");
    assert.ok(bytes.equals(STREAMED), "stored bytes equal the streamed source");
    assert.equal(object.httpMetadata.contentType, "application/zip");
  });

  test("it stores a large source without Content-Length as a multipart upload", async () => {
    const url = "https://www.dropbox.com/scl/fo/folder/large?rlkey=x&dl=1";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/c/d/large.zip" }));

    assert.equal(status, 200, JSON.stringify(body));
    const { object, bytes } = await storedBytes("dropbox/c/d/large.zip");
    assert.equal(bytes.length, LARGE_STREAMED.length);
    assert.ok(bytes.equals(LARGE_STREAMED), "stored bytes equal the streamed source");
    assert.equal(object.customMetadata.provider, "dropbox");
    assert.match(object.httpMetadata.contentDisposition, /filename="large.zip"/);
  });

  test("it stores unknown-length bodies of exactly one or two parts, and one byte either side", async () => {
    for (const size of EDGE_SIZES) {
      const key = `dropbox/edge/${size}/edge.zip`;

      const { status, body } = await postJob(mf, job({ source_url: `https://www.dropbox.com/scl/fo/edge/${size}`, object_key: key }));

      assert.equal(status, 200, `${size}: ${JSON.stringify(body)}`);
      assert.equal(body.size, size);
      assert.ok((await storedBytes(key)).bytes.equals(EDGE_BODIES.get(size)), `${size} bytes stored exactly`);
    }
  });
});

describe("refusals", { timeout: TEST_TIMEOUT_MS }, () => {
  test("a missing token is answered 401 and nothing is fetched", async () => {
    const before = seen.length;

    const { status, body } = await postJob(mf, job({ object_key: "dropbox/x/y/notoken.pdf" }), { token: null });

    assert.equal(status, 401);
    assert.equal(body.success, false);
    assert.equal(seen.length, before);
    assert.equal(await bucket.head("dropbox/x/y/notoken.pdf"), null);
  });

  test("a wrong token is answered 401, including one that only shares a prefix", async () => {
    for (const token of ["wrong", "test-token-7f3", "test-token-7f3a-and-more", "TEST-TOKEN-7F3A", ""]) {
      const { status, body } = await postJob(mf, job(), { token });
      assert.equal(status, 401, `token ${JSON.stringify(token)}`);
      assert.match(body.error, /unauthorized/);
      assert.doesNotMatch(JSON.stringify(body), /test-token-7f3a/);
    }
  });

  test("a host outside the allow-list is refused before any fetch", async () => {
    const before = seen.length;
    const refused = [
      ["https://evil.example/scl/fi/abc123/report.pdf", "host"],
      ["https://dropbox.com.evil.example/s/x/report.pdf", "host"],
      ["https://notdropbox.com/s/x/report.pdf", "host"],
      ["https://evil.example/www.dropbox.com/report.pdf", "host"],
      ["https://www.dropbox.com@evil.example/report.pdf", "userinfo"],
      ["https://evil.example\\@www.dropbox.com/report.pdf", "host"],
      ["http://www.dropbox.com/scl/fi/abc123/report.pdf", "scheme"],
      ["https://www.dropbox.com:8443/scl/fi/abc123/report.pdf", "port"],
    ];
    for (const [url, reason] of refused) {
      const { status, body } = await postJob(mf, job({ source_url: url }));
      assert.equal(status, 403, `${url}: ${JSON.stringify(body)}`);
      assert.deepEqual({ success: body.success, error: body.error, reason: body.reason }, { success: false, error: "policy", reason }, url);
      assert.match(body.detail, /source_url refused/);
    }
    assert.equal(seen.length, before, "no outbound request was made");
  });

  test("a landing page of a provider whose files come from resolution (WeTransfer) is refused before any fetch", async () => {
    const before = seen.length;
    const { status, body } = await postJob(
      mf,
      job({ provider: "wetransfer", source_url: "https://wetransfer.com/downloads/abc/def" }),
    );

    assert.equal(status, 403, JSON.stringify(body));
    assert.equal(body.reason, "host");
    assert.equal(seen.length, before, "no outbound request was made");
  });

  test("a provider the generated file does not name is refused", async () => {
    const { status, body } = await postJob(mf, job({ provider: "filehost", source_url: "https://filehost.example/f" }));

    assert.equal(status, 400);
    assert.match(body.error, /unsupported provider: filehost/);
  });

  test("a redirect to a foreign host is refused without following it", async () => {
    const url = "https://www.dropbox.com/s/foreign/redirect?dl=1";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/f/f/foreign.pdf" }));

    assert.equal(status, 403, "a policy refusal: the link's outcome, not a Worker failure");
    assert.deepEqual([body.error, body.reason], ["policy", "host"]);
    assert.match(body.detail, /redirect refused: host evil.example is not allowed/);
    assert.ok(!seen.some((u) => new URL(u).host === "evil.example"), "the foreign host was never contacted");
    assert.equal(await bucket.head("dropbox/f/f/foreign.pdf"), null);
  });

  test("a redirect to plain http is refused", async () => {
    const { status, body } = await postJob(mf, job({ source_url: "https://www.dropbox.com/s/http/redirect" }));

    assert.equal(status, 403);
    assert.deepEqual([body.error, body.reason], ["policy", "scheme"]);
    assert.match(body.detail, /redirect refused: scheme http is not https/);
  });

  test("a redirect loop stops after five hops", async () => {
    const before = seen.length;

    const { status, body } = await postJob(mf, job({ source_url: "https://www.dropbox.com/s/loop" }));

    assert.equal(status, 502);
    assert.match(body.error, /too many redirects/);
    assert.equal(seen.length - before, 6, "the first request and five redirects");
  });

  test("an HTML answer (a landing page) is refused and not stored", async () => {
    const url = "https://www.dropbox.com/s/landing/page";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/h/h/page.pdf" }));

    assert.equal(status, 422);
    assert.deepEqual(body, { success: false, error: "source returned HTML, not a file" });
    assert.equal(await bucket.head("dropbox/h/h/page.pdf"), null);
  });

  test("a source 404 is answered 502 with the source status", async () => {
    const url = "https://www.dropbox.com/s/missing/file.pdf";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/m/m/missing.pdf" }));

    assert.equal(status, 502);
    assert.deepEqual(body, { success: false, error: "source answered 404" });
    assert.equal(await bucket.head("dropbox/m/m/missing.pdf"), null);
  });

  test("a source 500 is answered 502", async () => {
    const { status, body } = await postJob(mf, job({ source_url: "https://www.dropbox.com/s/server/error" }));

    assert.equal(status, 502);
    assert.equal(body.error, "source answered 500");
  });

  test("a body shorter than its Content-Length fails and leaves no object", async () => {
    const url = "https://www.dropbox.com/s/short/body";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: "dropbox/s/s/short.pdf" }));

    assert.equal(status, 502, JSON.stringify(body));
    assert.equal(body.success, false);
    assert.equal(await bucket.head("dropbox/s/s/short.pdf"), null);
  });

  test("invalid bodies are answered 400 with the reason", async () => {
    const cases = [
      ["{not json", /invalid JSON body/],
      [JSON.stringify([1, 2]), /body must be a JSON object/],
      [JSON.stringify(job({ source_url: undefined })), /missing or invalid field: source_url/],
      [JSON.stringify(job({ object_key: 7 })), /missing or invalid field: object_key/],
      [JSON.stringify(job({ provider: undefined })), /missing or invalid field: provider/],
      [JSON.stringify(job({ email_id: undefined })), /missing or invalid field: email_id/],
      [JSON.stringify(job({ bucket: 3 })), /invalid bucket/],
      [JSON.stringify(job({ source_url: "not a url" })), /invalid source_url/],
      [JSON.stringify(job({ object_key: "dropbox/../../etc/passwd" })), /invalid object_key: contains \.\./],
      [JSON.stringify(job({ object_key: "/dropbox/a/b.pdf" })), /invalid object_key: starts with \//],
      [JSON.stringify(job({ object_key: "dropbox//b.pdf" })), /invalid object_key: empty or \. path segment/],
      [JSON.stringify(job({ object_key: `dropbox/${"a".repeat(1100)}` })), /invalid object_key: longer than 1024/],
    ];
    for (const [raw, expected] of cases) {
      const { status, body } = await postJob(mf, raw);
      assert.equal(status, 400, raw.slice(0, 80));
      assert.match(body.error, expected);
    }
  });

  test("a non-JSON content type is answered 415, a body over 16 KiB 413, other methods 405", async () => {
    const { status } = await postJob(mf, job(), { headers: { "Content-Type": "text/plain" } });
    const huge = await postJob(mf, JSON.stringify(job({ email_id: "x".repeat(20_000) })));
    const get = await mf.dispatchFetch("http://worker.local/");
    const other = await mf.dispatchFetch("http://worker.local/other", { method: "POST" });

    assert.equal(status, 415);
    assert.equal(huge.status, 413);
    assert.equal(get.status, 405);
    assert.equal(other.status, 404);
    await get.arrayBuffer();
    await other.arrayBuffer();
  });
});

describe("objects keyed by the link's key form", { timeout: TEST_TIMEOUT_MS }, () => {
  const keyForm = "https://www.dropbox.com/scl/fi/abc123/report.pdf?dl=1&rlkey=k";

  test("a live copy of the same link is answered without fetching the source again", async () => {
    const first = await postJob(mf, job({ source_key: keyForm, email_id: "email-1" }));
    const fetchesBefore = seen.length;

    const second = await postJob(mf, job({ source_key: keyForm, email_id: "email-2" }));

    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal(first.body.reused, false);
    assert.equal(second.status, 200, JSON.stringify(second.body));
    assert.deepEqual(
      [second.body.reused, second.body.object_key, second.body.original_filename, second.body.size],
      [true, first.body.object_key, first.body.original_filename, PDF.length],
    );
    assert.equal(seen.length, fetchesBefore, "the source was not fetched for the second request");
  });

  test("an object holding another link's copy is never overwritten (key_conflict)", async () => {
    const key = "dropbox/c0ffee00/c0ffee00/report.pdf";
    const stored = await postJob(mf, job({ object_key: key, source_key: keyForm }));
    const fetchesBefore = seen.length;

    const other = await postJob(
      mf,
      job({ object_key: key, source_url: "https://www.dropbox.com/s/plain/photo.jpg", source_key: "https://www.dropbox.com/s/plain/photo.jpg" }),
    );

    assert.equal(stored.status, 200);
    assert.equal(other.status, 403, JSON.stringify(other.body));
    assert.deepEqual([other.body.error, other.body.reason], ["policy", "key_conflict"]);
    assert.equal(seen.length, fetchesBefore, "nothing was fetched");
    const { object } = await storedBytes(key);
    assert.equal(object.customMetadata.sourceKey, keyForm, "the first link's copy is still there");
  });

  test("an expired copy of the same link is replaced by a fresh one", async () => {
    const key = "dropbox/e0e0e0e0/e0e0e0e0/report.pdf";
    await bucket.put(key, "stale", {
      customMetadata: { sourceKey: keyForm, expiresAt: new Date(Date.now() - 1000).toISOString() },
    });

    const { status, body } = await postJob(mf, job({ object_key: key, source_key: keyForm }));

    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.reused, false);
    assert.ok((await storedBytes(key)).bytes.equals(PDF), "the fresh copy replaced the stale one");
  });
});

describe("the byte cap (R2_MAX_BYTES, lowered by max_bytes)", { timeout: TEST_TIMEOUT_MS }, () => {
  test("a source announcing more than the cap is refused before anything is stored", async () => {
    const key = "dropbox/b1/b1/announced.pdf";

    const { status, body } = await postJob(mf, job({ object_key: key, max_bytes: PDF.length - 1 }));

    assert.equal(status, 403, JSON.stringify(body));
    assert.deepEqual([body.error, body.reason], ["policy", "too_large"]);
    assert.equal(await bucket.head(key), null);
  });

  test("a streamed source is counted and refused once it passes the cap, below and above one part", async () => {
    const cases = [
      ["/scl/fo/folder/streamed", STREAMED.length - 1, "dropbox/b2/b2/small.zip"],
      ["/scl/fo/folder/large", 6 * MiB, "dropbox/b3/b3/large.zip"],
    ];
    for (const [path, cap, key] of cases) {
      const { status, body } = await postJob(
        mf,
        job({ source_url: `https://www.dropbox.com${path}`, object_key: key, max_bytes: cap }),
      );
      assert.equal(status, 403, `${path}: ${JSON.stringify(body)}`);
      assert.deepEqual([body.error, body.reason], ["policy", "too_large"], path);
      assert.equal(await bucket.head(key), null, `${path}: nothing stored`);
    }
  });

  test("a source of exactly the cap is stored", async () => {
    const key = "dropbox/b4/b4/exact.zip";
    const url = "https://www.dropbox.com/scl/fo/folder/streamed";

    const { status, body } = await postJob(mf, job({ source_url: url, object_key: key, max_bytes: STREAMED.length }));

    assert.equal(status, 200, JSON.stringify(body));
    assert.ok((await storedBytes(key)).bytes.equals(STREAMED));
  });

  test("the Worker's R2_MAX_BYTES applies when the request sends no max_bytes, and a larger max_bytes cannot raise it", async () => {
    const capped = startWorker({ origin: source.origin, bindings: { R2_MAX_BYTES: "1000" } });
    try {
      await capped.ready;
      const plain = await postJob(capped, job({ object_key: "dropbox/b5/b5/a.pdf" }));
      const raised = await postJob(capped, job({ object_key: "dropbox/b5/b5/b.pdf", max_bytes: 10 * MiB }));

      assert.deepEqual([plain.status, plain.body.reason], [403, "too_large"]);
      assert.deepEqual([raised.status, raised.body.reason], [403, "too_large"]);
    } finally {
      await capped.dispose();
    }
  });

  test("an invalid max_bytes is answered 400, an invalid R2_MAX_BYTES 500", async () => {
    for (const bad of [0, -1, 1.5, "1000"]) {
      const { status, body } = await postJob(mf, job({ max_bytes: bad }));
      assert.equal(status, 400, `${JSON.stringify(bad)}: ${JSON.stringify(body)}`);
      assert.match(body.error, /max_bytes/);
    }
    const broken = startWorker({ origin: source.origin, bindings: { R2_MAX_BYTES: "lots" } });
    try {
      await broken.ready;
      const { status, body } = await postJob(broken, job());
      assert.equal(status, 500);
      assert.match(body.error, /R2_MAX_BYTES/);
    } finally {
      await broken.dispose();
    }
  });
});

describe("configuration", { timeout: TEST_TIMEOUT_MS }, () => {
  test("a Worker without R2_FETCH_TOKEN answers 500 whatever token is sent", async () => {
    const bare = startWorker({ origin: source.origin, bindings: { R2_FETCH_TOKEN: undefined } });
    try {
      await bare.ready;
      const withToken = await postJob(bare, job());
      const withoutToken = await postJob(bare, job(), { token: null });

      assert.equal(withToken.status, 500);
      assert.match(withToken.body.error, /R2_FETCH_TOKEN is missing/);
      assert.equal(withoutToken.status, 500);
    } finally {
      await bare.dispose();
    }
  });

  test("without R2_PUBLIC_BASE_URL r2_url is null (the service presigns); retention comes from R2_RETENTION_HOURS", async () => {
    const worker = startWorker({
      origin: source.origin,
      bindings: { R2_PUBLIC_BASE_URL: undefined, R2_RETENTION_HOURS: "2" },
    });
    try {
      await worker.ready;
      const before = Date.now();

      const { status, body } = await postJob(worker, job({ object_key: "dropbox/p/p/private.pdf" }));

      assert.equal(status, 200, JSON.stringify(body));
      assert.equal(body.r2_url, null);
      assert.equal(body.object_key, "dropbox/p/p/private.pdf");
      const object = await (await worker.getR2Bucket("R2_BUCKET")).head("dropbox/p/p/private.pdf");
      const expiresIn = Date.parse(object.customMetadata.expiresAt) - before;
      assert.ok(Math.abs(expiresIn - 2 * 3600 * 1000) < 60_000, object.customMetadata.expiresAt);
    } finally {
      await worker.dispose();
    }
  });
});
