// Request builders and idempotency keys.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { Code, codeName, jobRequest, withKey } from "../../dist/index.js";

test("a prompt job from a path leaves unset what was not given", () => {
  const face = join(mkdtempSync(join(tmpdir(), "facegen-")), "face.jpg");
  writeFileSync(face, Buffer.from([0xff, 0xd8, 0xff, 1]));
  const request = jobRequest({ prompt: "a portrait", reference: face });
  assert.deepEqual(request.reference, { case: "referenceImage", value: new Uint8Array([0xff, 0xd8, 0xff, 1]) });
  assert.equal(request.seed, undefined);
  assert.equal(request.guidanceScale, undefined);
  assert.equal(request.lora, undefined);
  assert.equal(request.numImages, 1);
  assert.equal(request.targetImage.length, 0);
});

test("a template job from bytes with every option", () => {
  const request = jobRequest({
    reference: new Uint8Array([1]), target: new Uint8Array([2]), seed: 7, guidanceScale: 4.5, lora: "style",
    loraWeight: 0.5, mouthMask: true, numImages: 2, previewEvery: 5, idempotencyKey: "order-1",
  });
  assert.deepEqual([...request.targetImage], [2]);
  assert.equal(request.seed, 7n);
  assert.equal(request.lora?.name, "style");
  assert.equal(request.lora?.weight, 0.5);
  assert.ok(request.swapOptions?.mouthMask && !request.swapOptions?.manyFaces);
  assert.equal(request.idempotencyKey, "order-1");
});

test("exactly one reference, and a lora weight needs a name", () => {
  assert.throws(() => jobRequest({ prompt: "x" }), /exactly one/);
  assert.throws(() => jobRequest({ reference: new Uint8Array([1]), referenceKey: "refs/a" }), /exactly one/);
  assert.throws(() => jobRequest({ reference: new Uint8Array([1]), loraWeight: 1 }), /lora name/);
  assert.equal(jobRequest({ referenceKey: "refs/a" }).reference.case, "referenceKey");
});

test("withKey keeps a key and gives each keyless request its own, leaving the caller's alone", () => {
  const keyed = jobRequest({ referenceKey: "k", idempotencyKey: "mine" });
  assert.equal(withKey(keyed), keyed);
  const bare = jobRequest({ referenceKey: "k" });
  const [first, second] = [withKey(bare), withKey(bare)];
  assert.ok(first.idempotencyKey && first.idempotencyKey !== second.idempotencyKey);
  assert.ok(first.idempotencyKey.length <= 200);
  assert.equal(bare.idempotencyKey, "");
  assert.equal(withKey({ prompt: "plain object" }).prompt, "plain object");
});

test("status names are written as gRPC writes them", () => {
  assert.equal(codeName(Code.InvalidArgument), "INVALID_ARGUMENT");
  assert.equal(codeName(Code.Unavailable), "UNAVAILABLE");
  assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
});
