// The TypeScript code committed in src/gen is what `buf generate` makes from protos/ now.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const NODE_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const ROOT = join(NODE_DIR, "..", "..");
const GEN = "clients/node/src/gen";

function files(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

test("the generated code is fresh (else run `make node-protos`)", () => {
  const out = mkdtempSync(join(tmpdir(), "facegen-gen-"));
  execFileSync(join(NODE_DIR, "node_modules", ".bin", "buf"), ["generate", "--template", "buf.gen.yaml", "-o", out],
    { cwd: ROOT, stdio: "pipe" });
  const fresh = join(out, GEN);
  const committed = join(ROOT, GEN);
  assert.deepEqual(files(committed), files(fresh));
  const stale = files(fresh).filter((name) =>
    !readFileSync(join(fresh, name)).equals(readFileSync(join(committed, name))));
  assert.deepEqual(stale, [], "generated code is stale: run `make node-protos`");
});
