// The Worker's providers come from src/providers.generated.json (`make providers-json`): its allow-list and key rules
// under plain Node, the same file read by the Worker on Miniflare (a copy of the Worker with other provider data
// proves that the file, not a literal, decides), and the .json Text rule shared by the rig, wrangler and Node.
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import providersText from "../src/providers.generated.json";
import {
  allowListFrom,
  ALLOWED_HOST_SUFFIXES,
  hostAllowed,
  KEY_RULES,
  PROVIDERS,
  sourceUrlRefusal,
} from "../src/policy.js";
import { job, makeBytes, MODULE_RULES, postJob, startSourceServer, startWorker, WORKER_DIR } from "../scripts/rig.mjs";

const GENERATED = path.join(WORKER_DIR, "src", "providers.generated.json");
const TEST_TIMEOUT_MS = 30_000;

async function generatedDocument() {
  return JSON.parse(await readFile(GENERATED, "utf8"));
}

function coveredBy(host, suffixes) {
  return suffixes.some((suffix) => host === suffix || host.endsWith(`.${suffix}`));
}

describe("the allow-list and key rules under plain Node", () => {
  test("the registry is the generated file, parsed once", async () => {
    assert.deepEqual(PROVIDERS, (await generatedDocument()).providers);
    assert.ok(Object.isFrozen(PROVIDERS) && Object.isFrozen(PROVIDERS[0].download_hosts), "nobody can edit it at run time");
  });

  test("every copyable provider with download hosts is allowed from its download hosts, no other", async () => {
    const { providers } = await generatedDocument();
    const expected = providers.filter((p) => p.copyable && p.download_hosts.length > 0).map((p) => p.name);
    assert.deepEqual(Object.keys(ALLOWED_HOST_SUFFIXES), expected);
    assert.ok(expected.includes("dropbox"));
    for (const provider of providers) {
      const allowed = expected.includes(provider.name);
      for (const host of provider.download_hosts) {
        assert.equal(hostAllowed(host, provider.name), allowed, `${provider.name}: ${host}`);
        assert.equal(hostAllowed(`sub.${host}`, provider.name), allowed, `${provider.name}: sub.${host}`);
      }
      // a link domain no download host covers is a landing page's host: never fetched
      for (const host of provider.domains.filter((domain) => !coveredBy(domain, provider.download_hosts))) {
        assert.ok(!hostAllowed(host, provider.name), `${provider.name}: ${host}`);
      }
    }
  });

  test("a host only in the file's Dropbox download hosts (not under a link domain) is allowed", async () => {
    const dropbox = (await generatedDocument()).providers.find((p) => p.name === "dropbox");
    const onlyDownloadHosts = dropbox.download_hosts.filter((host) => !coveredBy(host, dropbox.domains));
    assert.ok(onlyDownloadHosts.length > 0, "the file names a Dropbox download host outside its link domains");
    for (const host of onlyDownloadHosts) {
      assert.ok(hostAllowed(host, "dropbox"), host);
      assert.ok(hostAllowed(`previews.${host}`, "dropbox"), `previews.${host}`);
      assert.equal(sourceUrlRefusal(new URL(`https://previews.${host}/f/report.pdf`), "dropbox"), null);
    }
  });

  test("Dropbox keeps exactly the hosts of the former literal", () => {
    assert.deepEqual(ALLOWED_HOST_SUFFIXES.dropbox, ["dropbox.com", "dropboxusercontent.com"]);
  });

  test("a provider that is not copyable (MEGA) is refused; WeTransfer allows its direct-link host only", () => {
    assert.ok(!Object.hasOwn(ALLOWED_HOST_SUFFIXES, "mega"));
    assert.ok(!hostAllowed("mega.nz", "mega"));
    assert.equal(sourceUrlRefusal(new URL("https://mega.nz/file/abc#key"), "mega").reason, "host");
    assert.ok(hostAllowed("download.wetransfer.com", "wetransfer"));
    assert.ok(!hostAllowed("download.wetransfer.com.evil.example", "wetransfer"));
    assert.ok(!hostAllowed("wetransfer-download.com", "wetransfer"));
  });

  test("a provider becomes allowed as soon as it is copyable and names download hosts", () => {
    const landing = { name: "transfer", domains: ["transfer.example", "www.transfer.example"], download_hosts: [],
      copyable: true, key_params: null, fragment_identifies: false };
    assert.deepEqual(allowListFrom([landing]), {});
    assert.deepEqual(allowListFrom([{ ...landing, download_hosts: ["dl.transfer-cdn.example"] }]),
      { transfer: ["dl.transfer-cdn.example"] }, "the download hosts only: the landing domains are never fetched");
    assert.deepEqual(allowListFrom([{ ...landing, download_hosts: ["transfer.example", "www.transfer.example"] }]),
      { transfer: ["transfer.example"] }, "a host covered by another listed one is dropped");
    assert.deepEqual(allowListFrom([{ ...landing, download_hosts: ["dl.transfer-cdn.example"], copyable: false }]), {});
  });

  test("the key rules are the file's key parameters (sorted) and fragment rule, for every provider", async () => {
    const { providers } = await generatedDocument();
    assert.deepEqual(Object.keys(KEY_RULES), providers.map((p) => p.name));
    for (const provider of providers) {
      assert.deepEqual(KEY_RULES[provider.name], {
        keyParams: provider.key_params === null ? null : [...provider.key_params].sort(),
        fragmentIdentifies: provider.fragment_identifies,
      }, provider.name);
    }
    // the service's key form for Dropbox (services/r2_offload.py KEY_FORM_PARAMS), and MEGA's key in the fragment
    assert.deepEqual(KEY_RULES.dropbox, { keyParams: ["dl", "e", "raw", "rlkey", "st"], fragmentIdentifies: false });
    assert.deepEqual(KEY_RULES.mega, { keyParams: null, fragmentIdentifies: true });
  });
});

describe("one module rule for .json: a Text module, in the rig, in wrangler.toml and under Node", () => {
  test("the rig types .json as Text", () => {
    assert.deepEqual(MODULE_RULES.filter((rule) => rule.include.includes("**/*.json")), [{ type: "Text", include: ["**/*.json"] }]);
  });

  test("wrangler.toml has the same Text rule, falling through to wrangler's defaults", async () => {
    const toml = await readFile(path.join(WORKER_DIR, "wrangler.toml"), "utf8");
    // Each [[rules]] table up to the next table header; the file has no multi-line values there.
    const rules = [...toml.matchAll(/^\[\[rules\]\]\n((?:(?!\[).*\n)*)/gm)].map((match) => match[1]);
    const jsonRules = rules.filter((body) => /^globs\s*=\s*\[[^\]]*"\*\*\/\*\.json"/m.test(body));
    assert.equal(jsonRules.length, 1, toml);
    assert.match(jsonRules[0], /^type\s*=\s*"Text"$/m);
    assert.match(jsonRules[0], /^fallthrough\s*=\s*true$/m);
  });

  test("under Node (scripts/text-modules.mjs) the file's default export is its text", async () => {
    assert.equal(typeof providersText, "string");
    assert.equal(providersText, await readFile(GENERATED, "utf8"));
  });
});

describe("the Worker on Miniflare reads the generated file", { timeout: TEST_TIMEOUT_MS }, () => {
  const FILE = makeBytes(20_000, 3);
  const CDN = "files.dropbox-cdn.example"; // in no provider's hosts until the copy below adds it
  let source;
  let mf;
  let copyDir;
  let copy;

  before(async () => {
    source = await startSourceServer({
      "/f/report.pdf": (req, res) => {
        res.writeHead(200, { "Content-Type": "application/pdf", "Content-Length": FILE.length });
        res.end(FILE);
      },
    });
    // A copy of the Worker whose generated file gives Dropbox one more download host, adds a new copyable provider
    // with its download host, and gives MEGA (still not copyable) its own domain as a download host.
    copyDir = await mkdtemp(path.join(os.tmpdir(), "worker-providers-"));
    await cp(path.join(WORKER_DIR, "src"), path.join(copyDir, "src"), { recursive: true });
    const document = await generatedDocument();
    const byName = Object.fromEntries(document.providers.map((p) => [p.name, p]));
    byName.dropbox.download_hosts.push("dropbox-cdn.example");
    document.providers.push({ name: "newhost", domains: ["newhost.example"], download_hosts: ["dl.newhost.example"],
      copyable: true, key_params: null, fragment_identifies: false });
    byName.mega.download_hosts.push("mega.nz");
    await writeFile(path.join(copyDir, "src", "providers.generated.json"), `${JSON.stringify(document, null, 2)}\n`);
    mf = startWorker({ origin: source.origin });
    copy = startWorker({ origin: source.origin, workerDir: copyDir });
    await Promise.all([mf.ready, copy.ready]);
  }, { timeout: TEST_TIMEOUT_MS });

  after(async () => {
    // A Worker that failed to start rejects dispose() with its start-up error, already reported by before().
    await Promise.allSettled([mf?.dispose(), copy?.dispose()]);
    await source?.close();
    if (copyDir) await rm(copyDir, { recursive: true, force: true });
  }, { timeout: TEST_TIMEOUT_MS });

  test("a host that only the file's Dropbox download hosts name is fetched, and refused once the file drops it", async () => {
    const request = job({ source_url: `https://${CDN}/f/report.pdf` });

    const fromCopy = await postJob(copy, request);
    const fetched = source.requests.length;
    const fromWorker = await postJob(mf, request);

    assert.equal(fromCopy.status, 200, JSON.stringify(fromCopy.body));
    assert.equal(fromCopy.body.success, true);
    assert.equal(source.requests.at(-1).host, CDN);
    assert.equal(fromWorker.status, 403, JSON.stringify(fromWorker.body));
    assert.equal(fromWorker.body.reason, "host");
    assert.equal(source.requests.length, fetched, "the Worker with today's file fetched nothing");
  });

  test("a provider is accepted once the file names its download hosts", async () => {
    const request = job({ provider: "newhost", source_url: "https://dl.newhost.example/f/report.pdf" });

    const fromCopy = await postJob(copy, request);
    const fromWorker = await postJob(mf, request);

    assert.equal(fromCopy.status, 200, JSON.stringify(fromCopy.body));
    assert.equal(fromWorker.status, 400);
    assert.match(fromWorker.body.error, /unsupported provider: newhost/);
  });

  test("a provider that is not copyable is refused, even with download hosts", async () => {
    for (const worker of [mf, copy]) {
      const { status, body } = await postJob(worker, job({ provider: "mega", source_url: "https://mega.nz/f/report.pdf" }));

      assert.equal(status, 400);
      assert.match(body.error, /unsupported provider: mega/);
    }
  });
});
