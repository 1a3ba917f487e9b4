/**
 * Pure rules of the R2 fetch Worker: which hosts may be fetched per provider, which object keys are acceptable,
 * the original file name from a Content-Disposition header, and the public URL of a stored object. No I/O here,
 * so these run under plain Node as well (test/policy.test.mjs, with scripts/text-modules.mjs).
 *
 * The providers come from providers.generated.json (`make providers-json` writes it from email_processing/providers/;
 * this module is the only one that reads it). It is imported as a Text module and parsed once, at module load: the
 * test rig's Miniflare has no JSON module type and workerd refuses import attributes, so the rig (scripts/rig.mjs),
 * wrangler (wrangler.toml [[rules]]) and Node (scripts/text-modules.mjs) all give `.json` the Text rule.
 */

import providersText from "./providers.generated.json";

/** The registry's providers, in registry order: `{name, domains, download_hosts, copyable, key_params, fragment_identifies}`. */
export const PROVIDERS = deepFreeze(JSON.parse(providersText).providers);

/**
 * The allow-list of `providers`: for each copyable provider that names download hosts, the hosts the Worker may
 * fetch from (each the domain itself or any subdomain of it): its download hosts, less those already covered by
 * another entry — the same list the service checks a source URL against. Link domains that no download host covers
 * (WeTransfer's and Smash's landing pages) are never fetched. A provider without download hosts or not copyable
 * (MEGA: encrypted, keyed by the fragment) has no entry, so the Worker refuses it.
 */
export function allowListFrom(providers) {
  const allowList = {};
  for (const provider of providers) {
    if (provider.copyable !== true || provider.download_hosts.length === 0) continue;
    // Download hosts only, as the service's allow-list (OFFLOADED_PROVIDERS): a provider's landing pages
    // (wetransfer.com, fromsmash.com) are never fetched, whoever asks.
    const hosts = [...new Set(provider.download_hosts.map(normaliseHost))];
    allowList[provider.name] = Object.freeze(hosts.filter((host) => !hosts.some((other) => host.endsWith(`.${other}`))));
  }
  return Object.freeze(allowList);
}

/**
 * The canonical-key rules of `providers`, as the service's key form applies them: `keyParams`, the query parameters
 * a link's key keeps (sorted; null keeps the query as it is), and `fragmentIdentifies`, whether the fragment is part
 * of the link (MEGA's key) rather than dropped.
 */
export function keyRulesFrom(providers) {
  return Object.freeze(Object.fromEntries(providers.map((provider) => [
    provider.name,
    Object.freeze({
      keyParams: provider.key_params === null ? null : Object.freeze([...provider.key_params].sort()),
      fragmentIdentifies: provider.fragment_identifies === true,
    }),
  ])));
}

/** Hosts the Worker may fetch from, per provider: the domain itself or any subdomain of it. */
export const ALLOWED_HOST_SUFFIXES = allowListFrom(PROVIDERS);

/** Canonical-key rules per provider (every provider of the registry, copyable or not). */
export const KEY_RULES = keyRulesFrom(PROVIDERS);

function normaliseHost(hostname) {
  return hostname.toLowerCase().replace(/\.$/, "");
}

function deepFreeze(value) {
  if (value !== null && typeof value === "object") {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

const MAX_OBJECT_KEY_BYTES = 1024;

/** Why `key` is not an acceptable object key, or null. Path-like keys whose segments are `.`/`..` are refused. */
export function objectKeyProblem(key) {
  if (new TextEncoder().encode(key).length > MAX_OBJECT_KEY_BYTES) return `longer than ${MAX_OBJECT_KEY_BYTES} bytes`;
  if (/[\u0000-\u001f\u007f\\]/.test(key)) return "control characters or backslashes";
  if (key.startsWith("/")) return "starts with /";
  if (key.includes("..")) return "contains ..";
  const segments = key.split("/");
  if (segments.some((segment) => segment === "" || segment === ".")) return "empty or . path segment";
  return null;
}

/**
 * Why `url` may not be fetched for `provider`: `{reason, detail}` with `reason` one of `scheme`, `userinfo`,
 * `port`, `host` (the Worker's policy reasons, the same words the service counts), or null. Checks the host as
 * WHATWG URL parsing reads it, never a substring of the URL.
 */
export function sourceUrlRefusal(url, provider) {
  if (url.protocol !== "https:") return { reason: "scheme", detail: `scheme ${url.protocol.replace(":", "")} is not https` };
  if (url.username || url.password) return { reason: "userinfo", detail: "credentials in URL" };
  if (url.port !== "") return { reason: "port", detail: `explicit port ${url.port}` };
  if (!hostAllowed(url.hostname, provider)) {
    return { reason: "host", detail: `host ${url.hostname} is not allowed for ${provider}` };
  }
  return null;
}

/** `sourceUrlRefusal`'s detail, or null. */
export function sourceUrlProblem(url, provider) {
  return sourceUrlRefusal(url, provider)?.detail ?? null;
}

export function hostAllowed(hostname, provider) {
  const suffixes = Object.hasOwn(ALLOWED_HOST_SUFFIXES, provider) ? ALLOWED_HOST_SUFFIXES[provider] : [];
  const host = normaliseHost(hostname);
  return suffixes.some((suffix) => host === suffix || host.endsWith(`.${suffix}`));
}

// --- file names -------------------------------------------------------------------------------------------------

/** The original file name: Content-Disposition `filename*` (RFC 5987/6266), then `filename`, then the key's tail. */
export function chooseFilename(contentDisposition, objectKey) {
  const fromHeader = filenameFromContentDisposition(contentDisposition);
  const name = sanitizeFilename(fromHeader ?? "");
  if (name) return name;
  return sanitizeFilename(objectKey.split("/").pop()) || "file";
}

export function filenameFromContentDisposition(header) {
  if (!header) return null;
  const params = parseHeaderParams(header);
  const extended = params.get("filename*");
  if (extended !== undefined) {
    const decoded = decodeExtValue(extended);
    if (decoded) return decoded;
  }
  const plain = params.get("filename");
  return plain === undefined || plain === "" ? null : plain;
}

/** Parameters of a header like `attachment; filename="a b.zip"; filename*=UTF-8''a%20b.zip` (lower-case names). */
function parseHeaderParams(header) {
  const params = new Map();
  const pattern = /;\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)/g;
  let match;
  while ((match = pattern.exec(header)) !== null) {
    const name = match[1].toLowerCase();
    let value = match[2].trim();
    if (value.startsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, "$1");
    if (!params.has(name)) params.set(name, value);
  }
  return params;
}

/** RFC 5987 ext-value `charset'lang'pct-encoded`; UTF-8 and ISO-8859-1 are understood. */
function decodeExtValue(value) {
  const match = /^([^']*)'[^']*'(.*)$/.exec(value);
  if (!match) return null;
  const charset = match[1].toLowerCase();
  try {
    if (charset === "utf-8" || charset === "utf8") return decodeURIComponent(match[2]);
    if (charset === "iso-8859-1" || charset === "latin1") {
      return match[2].replace(/%([0-9a-f]{2})/gi, (_, hex) => String.fromCharCode(parseInt(hex, 16)));
    }
  } catch {
    return null;
  }
  return null;
}

function sanitizeFilename(name) {
  const base = name.split(/[/\\]/).pop() || "";
  return base.replace(/[\u0000-\u001f\u007f]/g, "").trim().slice(0, 255);
}

/** `attachment` with an ASCII `filename` fallback and the exact name as UTF-8 `filename*`. */
export function buildContentDisposition(filename) {
  const ascii = filename.replace(/[^\x20-\x7e]/g, "_").replace(/["\\]/g, "_");
  const encoded = encodeURIComponent(filename).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

/** `<R2_PUBLIC_BASE_URL>/<key>` with each key segment percent-encoded; null when no public base URL is set. */
export function publicUrl(baseUrl, key) {
  if (typeof baseUrl !== "string" || baseUrl.trim() === "") return null;
  const path = key.split("/").map(encodeURIComponent).join("/");
  return `${baseUrl.trim().replace(/\/+$/, "")}/${path}`;
}
