// The Worker's pure rules under plain Node: allow-list by host, object keys, file names, public URLs.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  buildContentDisposition,
  chooseFilename,
  filenameFromContentDisposition,
  hostAllowed,
  objectKeyProblem,
  publicUrl,
  sourceUrlProblem,
} from "../src/policy.js";

test("Dropbox share and download hosts are allowed, by host and subdomain only", () => {
  for (const host of ["dropbox.com", "www.dropbox.com", "dl.dropboxusercontent.com", "uc1a2.dl.dropboxusercontent.com", "WWW.DROPBOX.COM", "www.dropbox.com."]) {
    assert.ok(hostAllowed(host, "dropbox"), host);
  }
  for (const host of ["dropbox.com.evil.example", "evildropbox.com", "notdropboxusercontent.com", "dropbox.co", "example.com", ""]) {
    assert.ok(!hostAllowed(host, "dropbox"), host);
  }
  assert.ok(!hostAllowed("www.dropbox.com", "wetransfer"), "providers without an allow-list allow nothing");
});

test("source URLs must be https on the default port without credentials", () => {
  assert.equal(sourceUrlProblem(new URL("https://www.dropbox.com/s/a/b.pdf?dl=1"), "dropbox"), null);
  assert.match(sourceUrlProblem(new URL("http://www.dropbox.com/s/a"), "dropbox"), /not https/);
  assert.match(sourceUrlProblem(new URL("https://www.dropbox.com:444/s/a"), "dropbox"), /explicit port/);
  assert.match(sourceUrlProblem(new URL("https://u:p@www.dropbox.com/s/a"), "dropbox"), /credentials/);
  assert.match(sourceUrlProblem(new URL("https://evil.example/www.dropbox.com"), "dropbox"), /host evil.example/);
});

test("object keys: bounded, no .., no empty segments, no control characters", () => {
  assert.equal(objectKeyProblem("dropbox/0a1b2c3d/4e5f6a7b/Report final.pdf"), null);
  assert.equal(objectKeyProblem("dropbox/0a1b2c3d/4e5f6a7b/résumé.pdf"), null);
  assert.match(objectKeyProblem("dropbox/../x"), /\.\./);
  assert.match(objectKeyProblem("dropbox/a/b..c"), /\.\./);
  assert.match(objectKeyProblem("/abs"), /starts with/);
  assert.match(objectKeyProblem("a//b"), /empty/);
  assert.match(objectKeyProblem("a/./b"), /empty or \./);
  assert.match(objectKeyProblem("a/b\nc"), /control/);
  assert.match(objectKeyProblem("a\\b"), /backslash/);
  assert.match(objectKeyProblem("é".repeat(513)), /longer than 1024 bytes/);
  assert.equal(objectKeyProblem("a".repeat(1024)), null);
});

test("the file name comes from filename* first, then filename, then the key", () => {
  const both = `attachment; filename="fallback.pdf"; filename*=UTF-8''R%C3%A9sum%C3%A9%20final.pdf`;
  assert.equal(filenameFromContentDisposition(both), "Résumé final.pdf");
  assert.equal(filenameFromContentDisposition(`attachment; filename*=utf-8'en'na%C3%AFve.txt; filename=x`), "naïve.txt");
  assert.equal(filenameFromContentDisposition(`attachment; filename*=iso-8859-1''caf%E9.zip`), "café.zip");
  assert.equal(filenameFromContentDisposition(`attachment; filename="a \\"quoted\\" name.zip"`), 'a "quoted" name.zip');
  assert.equal(filenameFromContentDisposition("attachment; filename=plain.bin"), "plain.bin");
  assert.equal(filenameFromContentDisposition(`attachment; filename*=UTF-8''%E0%A4%A; filename="ok.txt"`), "ok.txt");
  assert.equal(filenameFromContentDisposition("attachment"), null);
  assert.equal(filenameFromContentDisposition(null), null);

  assert.equal(chooseFilename(`attachment; filename="../../etc/passwd"`, "dropbox/a/b/x.bin"), "passwd");
  assert.equal(chooseFilename(null, "dropbox/a/b/Project.zip"), "Project.zip");
  assert.equal(chooseFilename('attachment; filename=""', "dropbox/a/b/file"), "file");
});

test("the stored Content-Disposition carries an ASCII fallback and the exact UTF-8 name", () => {
  assert.equal(
    buildContentDisposition('Résumé "v2" (final).pdf'),
    `attachment; filename="R_sum_ _v2_ (final).pdf"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%22v2%22%20%28final%29.pdf`,
  );
});

test("r2_url is the public base joined with the percent-encoded key, or null without a base", () => {
  assert.equal(publicUrl("https://files.example.com/", "dropbox/a/b/My File#1.pdf"), "https://files.example.com/dropbox/a/b/My%20File%231.pdf");
  assert.equal(publicUrl("https://pub-x.r2.dev", "dropbox/a/b/c.zip"), "https://pub-x.r2.dev/dropbox/a/b/c.zip");
  assert.equal(publicUrl(undefined, "k"), null);
  assert.equal(publicUrl("  ", "k"), null);
});

test("a backslash, percent-encoded or full-width trick never puts another host on the allow-list (issue 16)", () => {
  // The Worker reads URLs with Node's WHATWG parser, as render-signal's check_url (ada-url) does: same host.
  const refused = [
    "https://attacker.example\\.dropbox.com/s/a/b.pdf",
    "https://attacker.example\\@www.dropbox.com/s/a/b.pdf",
    "https://attacker.example%5C.dropbox.com/s/a/b.pdf",
    "https://www.dropbox.com:8443/s/a/b.pdf",
    "https://user@www.dropbox.com/s/a/b.pdf",
  ];
  for (const raw of refused) {
    let problem;
    try {
      problem = sourceUrlProblem(new URL(raw), "dropbox");
    } catch {
      problem = "unparsable";
    }
    assert.notEqual(problem, null, raw);
  }
  const canonical = new URL("HTTPS://WWW.DROPBOX.COM:443/s/a/R\u00e9sum\u00e9.pdf?dl=1");
  assert.equal(sourceUrlProblem(canonical, "dropbox"), null);
  assert.equal(canonical.href, "https://www.dropbox.com/s/a/R%C3%A9sum%C3%A9.pdf?dl=1");
});
