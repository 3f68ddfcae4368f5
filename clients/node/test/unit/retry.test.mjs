// Backoff, outage budget and deadline of the client's retries, on a fake clock and fake dice.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { backoffCap, DEFAULT_POLICY, GatewayError, isRetryable, Retrier } from "../../dist/index.js";

const policy = (changes = {}) => ({ ...DEFAULT_POLICY, ...changes });

function clock(start = 1000) {
  const fake = () => fake.now;
  fake.now = start;
  return fake;
}

test("the delay grows to its cap and is jittered below it", () => {
  const p = policy({ initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2, giveUpAfterMs: 60_000 });
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => backoffCap(p, n)), [100, 200, 400, 800, 1000, 1000]);
  const top = new Retrier(p, undefined, clock(), () => 1);
  assert.deepEqual([0, 1, 2].map(() => top.nextDelay(Code.Unavailable, "down")), [100, 200, 400]);
  const half = new Retrier(p, undefined, clock(), () => 0.5);
  assert.deepEqual([0, 1].map(() => half.nextDelay(Code.Unavailable, "down")), [50, 100]);
});

test("a success starts a fresh budget and backoff", () => {
  const now = clock();
  const retrier = new Retrier(policy({ initialBackoffMs: 100, giveUpAfterMs: 5000 }), undefined, now, () => 1);
  retrier.nextDelay(Code.Unavailable, "down");
  retrier.nextDelay(Code.Unavailable, "down");
  now.now += 4900;
  retrier.succeeded();
  now.now += 1000;
  assert.equal(retrier.nextDelay(Code.Unavailable, "down again"), 100);
});

test("the outage budget ends the retries with the last error and where the stream stopped", () => {
  const now = clock();
  const retrier = new Retrier(policy({ initialBackoffMs: 500, maxBackoffMs: 2000, giveUpAfterMs: 3000 }),
    undefined, now, () => 1);
  assert.equal(retrier.nextDelay(Code.Unavailable, "socket closed"), 500);
  now.now += 2500;
  assert.equal(retrier.nextDelay(Code.Unavailable, "socket closed"), 500, "cut to the budget left");
  now.now += 500;
  assert.throws(() => retrier.nextDelay(Code.Unavailable, "socket closed", "j1", 7n), (error) => {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.codeName, "UNAVAILABLE");
    assert.equal(error.details, "socket closed (gave up after 3.0 s and 3 attempts)");
    assert.equal(error.jobId, "j1");
    assert.equal(error.lastSeq, 7n);
    return true;
  });
});

test("only a lost gateway or a reset connection is retried", () => {
  assert.ok(isRetryable(Code.Unavailable) && isRetryable(Code.Aborted));
  for (const code of [Code.InvalidArgument, Code.ResourceExhausted, Code.AlreadyExists, Code.Unauthenticated,
    Code.Internal, Code.NotFound]) {
    assert.ok(!isRetryable(code));
    assert.throws(() => new Retrier(policy()).nextDelay(code, "no"), (error) => error.code === code);
  }
});

test("the caller's deadline cuts the delay and then ends the retries", () => {
  const now = clock();
  const retrier = Retrier.within(policy({ initialBackoffMs: 2000, maxBackoffMs: 2000 }), 3000, now, () => 1);
  assert.equal(retrier.attemptTimeout(), 3000);
  now.now += 2000;
  assert.equal(retrier.nextDelay(Code.Unavailable, "down"), 1000);
  now.now += 1000;
  assert.throws(() => retrier.nextDelay(Code.Unavailable, "down"),
    (error) => error.codeName === "DEADLINE_EXCEEDED" && /deadline/.test(error.details));
});

test("a unary attempt that timed out is tried again within the deadline", () => {
  const now = clock();
  const retrier = Retrier.within(policy({ initialBackoffMs: 100, callTimeoutMs: 5000 }), 20_000, now, () => 1);
  assert.equal(retrier.attemptTimeout(), 5000);
  assert.equal(retrier.unaryDelay(new ConnectError("timed out", Code.DeadlineExceeded)), 100);
  now.now += 20_000;
  assert.throws(() => retrier.unaryDelay(new ConnectError("timed out", Code.DeadlineExceeded)),
    (error) => error.codeName === "DEADLINE_EXCEEDED");
});

test("each retry is told to the caller's hook", () => {
  const notices = [];
  const retrier = new Retrier(policy({ initialBackoffMs: 100 }), undefined, clock(), () => 1);
  retrier.onRetry = (...notice) => notices.push(notice);
  retrier.nextDelay(Code.Unavailable, "Socket closed", "j1", 4n);
  assert.deepEqual(notices, [[1, 100, "UNAVAILABLE", "Socket closed", "j1", 4n]]);
});
