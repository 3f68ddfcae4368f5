// The Node client over TLS, against real gateway processes with a throwaway CA.
// tests/integration/client/test_tls.py starts them and runs this file with:
//   FACEGEN_TEST_TLS_GATEWAY=host:port       TLS, a bearer token required (FACEGEN_TEST_TOKEN)
//   FACEGEN_TEST_MTLS_GATEWAY=host:port      TLS that requires a client certificate of the CA
//   FACEGEN_TEST_TLS_CA, FACEGEN_TEST_TLS_CLIENT_CERT, FACEGEN_TEST_TLS_CLIENT_KEY: PEM files
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { Code, FacegenClient, GatewayError, jobRequest, JobState } from "../../dist/index.js";

const env = process.env;
const TLS_GATEWAY = env.FACEGEN_TEST_TLS_GATEWAY;
const MTLS_GATEWAY = env.FACEGEN_TEST_MTLS_GATEWAY;
if (!TLS_GATEWAY || !MTLS_GATEWAY || !env.FACEGEN_TEST_TLS_CA || !env.FACEGEN_TEST_TOKEN) {
  throw new Error("run through tests/integration/client/test_tls.py (it starts the gateways)");
}
const CA = readFileSync(env.FACEGEN_TEST_TLS_CA);
const CLIENT = { cert: readFileSync(env.FACEGEN_TEST_TLS_CLIENT_CERT), key: readFileSync(env.FACEGEN_TEST_TLS_CLIENT_KEY) };
const TOKEN = env.FACEGEN_TEST_TOKEN;
const FACE = Buffer.from(env.FACEGEN_TEST_FACE_PNG_B64 ?? "", "base64");
// Refusals are not worth riding out for long here: a short outage budget.
const POLICY = { initialBackoffMs: 50, maxBackoffMs: 200, giveUpAfterMs: 1_000 };
const clients = [];

function client(options) {
  const made = new FacegenClient({ policy: POLICY, ...options });
  clients.push(made);
  return made;
}

after(() => clients.forEach((made) => made.close()));

async function runJob(made) {
  const run = made.run(jobRequest({ prompt: "a portrait", reference: FACE }));
  for await (const _ of run) {
    // every event; the result is what counts here
  }
  return run.result;
}

/** The GatewayError a listModels call ends with (it must end with one). */
async function refusal(made) {
  const error = await made.listModels().then(() => undefined, (caught) => caught);
  assert.ok(error instanceof GatewayError, `expected a GatewayError, got ${error}`);
  return error;
}

test("a job runs over TLS with the CA that signed the gateway's certificate and a token", async () => {
  const result = await runJob(client({ target: TLS_GATEWAY, token: TOKEN, tls: { ca: CA } }));
  assert.equal(result.state, JobState.COMPLETED);
});

test("over TLS an unknown bearer token is still refused", async () => {
  const error = await refusal(client({ target: TLS_GATEWAY, token: "not-a-known-token-123456", tls: { ca: CA } }));
  assert.equal(error.code, Code.Unauthenticated);
});

// Node reports a TLS failure as INTERNAL (a certificate it cannot check) or CANCELED (the server closed
// the stream: no client certificate), which the client does not retry: the caller learns at once.
test("a gateway whose certificate the client cannot check is refused, as is plaintext", async () => {
  const untrusted = await refusal(client({ target: TLS_GATEWAY, token: TOKEN, tls: true }));
  assert.equal(untrusted.code, Code.Internal);
  assert.match(untrusted.message, /certificate/);
  const plaintext = await refusal(client({ target: TLS_GATEWAY, token: TOKEN }));
  assert.notEqual(plaintext.code, Code.Unauthenticated);
});

test("a gateway that requires a client certificate takes the client's and refuses a client without one", async () => {
  const models = await client({ target: MTLS_GATEWAY, tls: { ca: CA, ...CLIENT } }).listModels();
  assert.ok(models.length > 0);
  const refused = await refusal(client({ target: MTLS_GATEWAY, tls: { ca: CA } }));
  assert.ok([Code.Canceled, Code.Unavailable, Code.Internal].includes(refused.code), refused.message);
});

test("a certificate without its key is refused at once", () => {
  assert.throws(() => new FacegenClient({ target: MTLS_GATEWAY, tls: { ca: CA, cert: CLIENT.cert } }),
    /tls.cert and tls.key go together/);
});
