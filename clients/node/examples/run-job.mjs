#!/usr/bin/env node
// Runs a template job (a face put onto a photo) through the facegen gateway and prints its progress.
//
//   python -m services.stack up                     # prints "gateway 127.0.0.1:PORT"
//   (cd clients/node && npm ci)                      # once: installs and builds the client
//   node clients/node/examples/run-job.mjs --gateway 127.0.0.1:PORT [--reference face.jpg] [--target photo.jpg]
//
// Without --reference/--target it uses the repository's sample portraits (Grace Hopper onto the astronaut),
// written by the repository's Python (.venv/bin/python, or $FACEGEN_PYTHON). The gateway also comes from
// $FACEGEN_GATEWAY, the token from $FACEGEN_TOKEN. Ctrl-C cancels the job. Exit code 0 when the job completed.
// TLS: --tls (Node's root certificates), --tls-ca FILE (`python -m services.stack up --tls` prints it),
// --tls-cert FILE --tls-key FILE for a gateway that requires a client certificate.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { FaceSwapMethod, FacegenClient, FallbackReason, jobRequest, JobState, Stage } from "../dist/index.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

const { values: args } = parseArgs({
  options: {
    gateway: { type: "string", default: process.env.FACEGEN_GATEWAY ?? "127.0.0.1:50051" },
    token: { type: "string", default: process.env.FACEGEN_TOKEN },
    tls: { type: "boolean", default: false },
    "tls-ca": { type: "string" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
    reference: { type: "string" },
    target: { type: "string" },
  },
});

/** The repository's sample portraits, written by its Python into a temporary folder. */
function samplePhotos() {
  const python = process.env.FACEGEN_PYTHON ?? join(REPO, ".venv", "bin", "python");
  const folder = mkdtempSync(join(tmpdir(), "facegen-samples-"));
  const script = "import sys; from pathlib import Path; from services.stack.samples import write_samples; " +
    "print('\\n'.join(map(str, write_samples(Path(sys.argv[1])))))";
  const written = execFileSync(python, ["-c", script, folder], { cwd: REPO, encoding: "utf8" });
  const [reference, target] = written.trim().split("\n");
  return { reference, target };
}

const photos = args.reference && args.target ? { reference: args.reference, target: args.target } : samplePhotos();
const read = (path) => (path === undefined ? undefined : readFileSync(path));
const tlsFiles = { ca: read(args["tls-ca"]), cert: read(args["tls-cert"]), key: read(args["tls-key"]) };
const client = new FacegenClient({
  target: args.gateway,
  token: args.token,
  tls: Object.values(tlsFiles).some((value) => value !== undefined) ? tlsFiles : args.tls,
  onRetry: (notice) => console.error(`  connection lost (${notice.codeName}: ${notice.details}); ` +
    `re-attaching to job ${notice.jobId ?? "(submitting)"} after seq ${notice.lastSeq} in ${notice.delayMs.toFixed(0)} ms`),
});
const stop = new AbortController();
process.once("SIGINT", () => stop.abort());

const run = client.run(jobRequest({ reference: photos.reference, target: photos.target }), { signal: stop.signal });
let lastStage;
try {
  for await (const event of run) {
    if (event.stage !== lastStage || event.remote || event.image) {
      const percent = event.percent.toFixed(1).padStart(5);
      console.log(`[${percent}%] ${Stage[event.stage].toLowerCase().padEnd(10)} ${event.message}`);
      lastStage = event.stage;
    }
  }
  const result = run.result;
  console.log(`job ${run.jobId}: ${JobState[result.state]}${result.message ? ` (${result.code}: ${result.message})` : ""}`);
  for (const image of result.images) {
    const how = image.faceSwapMethod === FaceSwapMethod.NONE
      ? `no face swap (${FallbackReason[image.fallbackReason].toLowerCase()}): ${image.fallbackMessage}`
      : `face swap: ${FaceSwapMethod[image.faceSwapMethod].toLowerCase()}`;
    // Set when the swapper's identity check measured the result (FACE_SWAP_VERIFY=identity).
    const identity = image.identityDistance === undefined ? "" : ` (identity distance ${image.identityDistance.toFixed(2)})`;
    console.log(`image ${image.index} ${image.width}x${image.height} ${how}${identity}\n  ${image.url}`);
  }
  process.exitCode = result.state === JobState.COMPLETED ? 0 : 1;
} catch (error) {
  console.error(stop.signal.aborted ? "cancelled" : `facegen: ${error.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
