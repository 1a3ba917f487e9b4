// Node's copy of the Worker's module rule for `.json` (scripts/rig.mjs MODULE_RULES, wrangler.toml [[rules]]): a
// `.json` file imported without an import attribute is a Text module, its default export the file's text, as
// workerd gives it. `npm test` loads this with `node --import ./scripts/text-modules.mjs`, so that
// test/policy.test.mjs can import src/policy.js under plain Node (which otherwise demands `with { type: "json" }`,
// an attribute workerd refuses). An import that names a type is left to Node.
// Kept outside test/ because `node --test test/` runs every module in that folder as a test file.
import { readFile } from "node:fs/promises";
import { register } from "node:module";
import { fileURLToPath } from "node:url";
import { isMainThread } from "node:worker_threads";

/** The module hook (it runs on Node's loader thread). */
export async function load(url, context, nextLoad) {
  const attributes = context.importAttributes ?? context.importAssertions ?? {};
  if (!url.startsWith("file:") || !url.endsWith(".json") || attributes.type !== undefined) {
    return nextLoad(url, context);
  }
  const text = await readFile(fileURLToPath(url), "utf8");
  return { format: "module", source: `export default ${JSON.stringify(text)};\n`, shortCircuit: true };
}

// `--import` runs this file on the main thread: register it as the hooks module (whose copy on the loader thread
// registers nothing).
if (isMainThread) register(import.meta.url);
