// Following a job across broken streams: new events only, when to re-attach, when the job is lost.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DEFAULT_POLICY, GatewayError, JobEventSchema, JobFollower, JobLostError, Retrier, Stage,
} from "../../dist/index.js";

const event = (seq, stage = Stage.GENERATING) => create(JobEventSchema, { jobId: "job-1", seq: BigInt(seq), stage });
const follower = (jobId, afterSeq = 0n) =>
  new JobFollower(new Retrier({ ...DEFAULT_POLICY, initialBackoffMs: 1, maxBackoffMs: 1 }), jobId, afterSeq);

test("replays at or below the last seq are dropped and the terminal event finishes the stream", () => {
  const f = follower("job-1");
  assert.deepEqual([1, 2, 2, 1, 3].map((seq) => f.accept(event(seq))), [true, true, false, false, true]);
  assert.equal(f.lastSeq, 3n);
  assert.ok(f.accept(event(4, Stage.TERMINAL)) && f.finished);
  assert.ok(!f.accept(event(5)), "nothing after the terminal event");
});

test("a broken or early-ended stream is re-attached and counted", () => {
  const f = follower("job-1");
  f.accept(event(1));
  assert.ok(f.reattachDelay(new ConnectError("Socket closed", Code.Unavailable)) >= 0);
  assert.ok(f.reattachDelay(undefined) >= 0, "a clean end without the terminal event");
  assert.equal(f.resumes, 2);
});

test("NOT_FOUND after the job was seen means it was lost; before, it is an unknown job", () => {
  const seen = follower("job-1");
  seen.accept(event(1));
  assert.throws(() => seen.reattachDelay(new ConnectError("not found", Code.NotFound)),
    (error) => error instanceof JobLostError && error.lastSeq === 1n);
  const unknown = follower("job-x");
  assert.throws(() => unknown.reattachDelay(new ConnectError("not found", Code.NotFound)),
    (error) => error instanceof GatewayError && !(error instanceof JobLostError));
});

test("a refused submit leaves no job to cancel; an interrupted one may", () => {
  const f = follower(undefined);
  assert.ok(!f.mayHaveLiveJob(new GatewayError(Code.InvalidArgument, "prompt")));
  assert.ok(f.mayHaveLiveJob(new GatewayError(Code.Unavailable, "gave up")));
  assert.ok(f.mayHaveLiveJob(new DOMException("aborted", "AbortError")));
  f.submitted("job-1");
  assert.ok(f.mayHaveLiveJob(undefined), "left early");
  assert.ok(!f.mayHaveLiveJob(new JobLostError(Code.NotFound, "gone")));
});
