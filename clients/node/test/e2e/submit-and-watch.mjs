#!/usr/bin/env node
// Submits a template job from Node and follows it to its end, for the interop e2e test
// (tests/e2e/test_clients.py): prints {"job_id": ...} first, then one JSON line per event.
//   node submit-and-watch.mjs GATEWAY REFERENCE_PATH TARGET_PATH
import { FacegenClient, jobRequest, Stage } from "../../dist/index.js";

const [gateway, reference, target] = process.argv.slice(2);
const client = new FacegenClient({ target: gateway });
try {
  const { jobId } = await client.submit(jobRequest({ reference, target }));
  console.log(JSON.stringify({ job_id: jobId }));
  for await (const event of client.watch(jobId)) {
    console.log(JSON.stringify({ seq: event.seq.toString(), stage: `STAGE_${Stage[event.stage]}`,
      message: event.message, state: event.result?.state }));
  }
} finally {
  client.close();
}
