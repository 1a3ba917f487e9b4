// The scheduled (cron) handler on Miniflare: it deletes the objects whose customMetadata.expiresAt has passed.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startWorker } from "../scripts/rig.mjs";

let mf;
let bucket;

before(async () => {
  mf = startWorker();
  await mf.ready;
  bucket = await mf.getR2Bucket("R2_BUCKET");
});

after(async () => {
  await mf?.dispose();
});

async function putWithExpiry(key, expiresAt) {
  const customMetadata = expiresAt === undefined ? {} : { expiresAt, provider: "dropbox", emailId: "e1" };
  await bucket.put(key, `bytes of ${key}`, { customMetadata });
}

async function allKeys() {
  const keys = [];
  let cursor;
  do {
    const page = await bucket.list({ cursor, limit: 1000 });
    keys.push(...page.objects.map((object) => object.key));
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return keys.sort();
}

async function runCron() {
  const worker = await mf.getWorker();
  return worker.scheduled({ cron: "17 * * * *", scheduledTime: new Date() });
}

test("the cron deletes only the objects whose expiresAt has passed, across list pages", { timeout: 30_000 }, async () => {
  // Given more objects than one list page (1000): expired ones, live ones, and objects without our metadata.
  const hourAgo = new Date(Date.now() - 3600 * 1000).toISOString();
  const inAnHour = new Date(Date.now() + 3600 * 1000).toISOString();
  const writes = [];
  for (let i = 0; i < 1010; i++) {
    const expired = i % 2 === 0;
    writes.push(putWithExpiry(`dropbox/page/${String(i).padStart(4, "0")}-${expired ? "old" : "new"}.bin`, expired ? hourAgo : inAnHour));
  }
  writes.push(putWithExpiry("dropbox/keep/no-metadata.bin", undefined));
  writes.push(putWithExpiry("dropbox/keep/unparseable.bin", "not a date"));
  writes.push(putWithExpiry("dropbox/zz/just-expired.bin", new Date(Date.now() - 1000).toISOString()));
  for (let i = 0; i < writes.length; i += 100) await Promise.all(writes.slice(i, i + 100));

  // When the scheduled handler runs
  const result = await runCron();

  // Then exactly the expired objects are gone
  assert.equal(result.outcome, "ok");
  const remaining = await allKeys();
  assert.equal(remaining.filter((key) => key.endsWith("-old.bin")).length, 0, "expired objects are deleted");
  assert.equal(remaining.filter((key) => key.endsWith("-new.bin")).length, 505, "live objects are kept");
  assert.ok(remaining.includes("dropbox/keep/no-metadata.bin"));
  assert.ok(remaining.includes("dropbox/keep/unparseable.bin"));
  assert.ok(!remaining.includes("dropbox/zz/just-expired.bin"));
  assert.equal(remaining.length, 507);
});

test("a second cron run with nothing expired deletes nothing", { timeout: 30_000 }, async () => {
  const before = await allKeys();

  const result = await runCron();

  assert.equal(result.outcome, "ok");
  assert.deepEqual(await allKeys(), before);
});
