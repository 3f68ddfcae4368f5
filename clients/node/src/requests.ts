/** JobRequest builders: photos from paths or bytes, settings by name. The gateway validates every field. */

import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import type { JobRequest } from "./gen/facegen/v1/gateway_pb.js";
import { JobRequestSchema } from "./gen/facegen/v1/gateway_pb.js";

/** A photo: its bytes, or the path of a file to read. */
export type Photo = Uint8Array | string | URL;

/** The bytes of `photo`, read from the file when it is a path. */
export function photoBytes(photo: Photo): Uint8Array {
  return photo instanceof Uint8Array ? photo : new Uint8Array(readFileSync(photo));
}

export interface JobSettings {
  prompt?: string;
  /** The face: a photo (bytes or a path). Give this or `referenceKey`. */
  reference?: Photo;
  /** `JobResult.referenceKey` of an earlier job, instead of the photo. */
  referenceKey?: string;
  /** Template mode: put the face onto this photo instead of generating one. */
  target?: Photo;
  negativePrompt?: string;
  model?: string;
  width?: number;
  height?: number;
  steps?: number;
  guidanceScale?: number;
  /** -1 or unset: random (the seed used is reported). */
  seed?: number | bigint;
  numImages?: number;
  lora?: string;
  loraWeight?: number;
  mouthMask?: boolean;
  useFaceEnhancer?: boolean;
  manyFaces?: boolean;
  idempotencyKey?: string;
  previewEvery?: number;
}

/** A JobRequest: a prompt job, or with `target` a template job. Unset settings mean the model's defaults. */
export function jobRequest(settings: JobSettings): JobRequest {
  const { reference, referenceKey, target, lora, loraWeight } = settings;
  if ((reference === undefined) === (referenceKey === undefined)) {
    throw new TypeError("give exactly one of reference (a photo) and referenceKey");
  }
  if (loraWeight !== undefined && !lora) {
    throw new TypeError("loraWeight needs a lora name");
  }
  return create(JobRequestSchema, {
    prompt: settings.prompt ?? "",
    negativePrompt: settings.negativePrompt ?? "",
    model: settings.model ?? "",
    width: settings.width ?? 0,
    height: settings.height ?? 0,
    steps: settings.steps ?? 0,
    guidanceScale: settings.guidanceScale,
    seed: settings.seed === undefined ? undefined : BigInt(settings.seed),
    numImages: settings.numImages ?? 1,
    lora: lora ? { name: lora, weight: loraWeight } : undefined,
    reference: reference !== undefined
      ? { case: "referenceImage", value: photoBytes(reference) }
      : { case: "referenceKey", value: referenceKey as string },
    targetImage: target === undefined ? new Uint8Array(0) : photoBytes(target),
    swapOptions: {
      mouthMask: settings.mouthMask ?? false,
      useFaceEnhancer: settings.useFaceEnhancer ?? false,
      manyFaces: settings.manyFaces ?? false,
    },
    idempotencyKey: settings.idempotencyKey ?? "",
    previewEvery: settings.previewEvery ?? 0,
  });
}
