// The Node client against real gateway processes on one Redis, in front of the fake generator and swapper.
// tests/integration/client/test_node_client.py starts them and runs this file with:
//   FACEGEN_TEST_GATEWAYS=host:port,host:port  FACEGEN_TEST_GATEWAY_PIDS=pid,pid  FACEGEN_TEST_GATEWAY_NAMES=a,b
// The second gateway is stopped (SIGSTOP) until the last test, so that the first runs every job.
// The fake generator takes about a second per job (8 steps), so streams can be broken in the middle.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  FacegenClient, GatewayError, jobRequest, JobState, Stage,
} from "../../dist/index.js";
import { TcpProxy, until } from "./tcp-proxy.mjs";

const [FIRST, SECOND] = (process.env.FACEGEN_TEST_GATEWAYS ?? "").split(",");
const [FIRST_PID, SECOND_PID] = (process.env.FACEGEN_TEST_GATEWAY_PIDS ?? "").split(",").map(Number);
const [, SECOND_NAME] = (process.env.FACEGEN_TEST_GATEWAY_NAMES ?? "").split(",");
if (!FIRST || !SECOND || !FIRST_PID || !SECOND_PID || !SECOND_NAME) {
  throw new Error("run through tests/integration/client/test_node_client.py (it starts the gateways)");
}
// A 48x48 PNG: the gateway checks that the reference face is a real image.
const FACE = Buffer.from(process.env.FACEGEN_TEST_FACE_PNG_B64 ?? "", "base64");
const POLICY = { initialBackoffMs: 50, maxBackoffMs: 500, giveUpAfterMs: 30_000 };
const proxies = [];
const clients = [];

async function through(upstream) {
  const proxy = await new TcpProxy(upstream).start();
  proxies.push(proxy);
  const client = new FacegenClient({ target: proxy.address, policy: POLICY });
  clients.push(client);
  return { proxy, client };
}

after(async () => {
  clients.forEach((client) => client.close());
  await Promise.all(proxies.map((proxy) => proxy.close()));
});

/** Every event once, seqs 1..n, exactly one terminal event, last. */
function checkStream(events) {
  assert.deepEqual(events.map((event) => event.seq), events.map((_, index) => BigInt(index + 1)));
  assert.deepEqual(events.filter((event) => event.stage === Stage.TERMINAL), [events.at(-1)]);
  return events.at(-1).result;
}

test("a run hands out every event once, in order, and the result", async () => {
  const { client } = await through(FIRST);
  const run = client.run(jobRequest({ prompt: "a portrait", reference: FACE, seed: 7 }));
  const events = [];
  for await (const event of run) {
    events.push(event);
  }
  const result = checkStream(events);
  assert.equal(result.state, JobState.COMPLETED);
  assert.equal(result.images[0].seed, 7n);
  assert.equal(run.created, true);
  assert.ok(events.some((event) => event.denoise?.step === 8));
});

test("a connection reset in the middle of the stream is ridden out without losing the job", async () => {
  const { client, proxy } = await through(FIRST);
  const run = client.run(jobRequest({ prompt: "a portrait", reference: FACE }));
  const events = [];
  for await (const event of run) {
    events.push(event);
    if (event.denoise?.step === 3 && run.resumes === 0) {
      proxy.reset();
    }
  }
  assert.equal(checkStream(events).state, JobState.COMPLETED);
  assert.ok(run.resumes >= 1 && proxy.connections >= 2);
  assert.deepEqual(events.filter((e) => e.denoise).map((e) => e.denoise.step), [1, 2, 3, 4, 5, 6, 7, 8]);
});

test("a submit whose answer was lost is repeated with the same key and finds the job it made", async () => {
  const { client, proxy } = await through(FIRST);
  await client.listModels(); // connected through the proxy before the replies are held
  proxy.holdReplies();
  const run = client.run(jobRequest({ prompt: "a portrait", reference: FACE }));
  const reading = run.wait();
  await until(() => proxy.heldBytes > 0, 10_000, "the gateway's answer to Submit");
  proxy.reset();
  const result = await reading;
  assert.equal(result.state, JobState.COMPLETED);
  assert.equal(run.created, false, "the second submit found the job the first one made");
});

test("aborting the signal cancels the job everywhere", async () => {
  const { client } = await through(FIRST);
  const controller = new AbortController();
  const run = client.run(jobRequest({ prompt: "a portrait", reference: FACE }), { signal: controller.signal });
  await assert.rejects(async () => {
    for await (const event of run) {
      if (event.stage === Stage.GENERATING) {
        controller.abort();
      }
    }
  }, (error) => error.name === "AbortError");
  const job = await client.get(run.jobId);
  assert.equal(job.state, JobState.CANCELLED, "the run cancelled its job before it let go");
});

test("a refused request is thrown at once, with the gateway's message", async () => {
  const { client } = await through(FIRST);
  const started = performance.now();
  await assert.rejects(client.run(jobRequest({ prompt: "   ", reference: FACE })).wait(), (error) => {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.details, /prompt/);
    return true;
  });
  assert.ok(performance.now() - started < 2000);
});

// Last: it kills the first gateway.
test("the second gateway takes the stream and the job over when the first is killed", async () => {
  const { client, proxy } = await through(FIRST);
  const run = client.run(jobRequest({ prompt: "a portrait", reference: FACE, seed: 11 }));
  const events = [];
  for await (const event of run) {
    events.push(event);
    if (event.denoise?.step === 2 && run.resumes === 0) {
      process.kill(SECOND_PID, "SIGCONT");
      process.kill(FIRST_PID, "SIGKILL");
      proxy.retarget(SECOND); // as a load balancer does once the first is gone
      proxy.reset();
    }
  }
  const result = checkStream(events);
  assert.equal(result.state, JobState.COMPLETED);
  assert.equal(result.images[0].seed, 11n);
  assert.ok(run.resumes >= 1);
  const resumed = events.filter((event) => event.resumed);
  assert.equal(resumed.length, 1);
  assert.match(resumed[0].message, new RegExp(`resumed by gateway ${SECOND_NAME}`));
});
