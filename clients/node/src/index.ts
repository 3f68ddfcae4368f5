/**
 * facegen's Node/TypeScript client: typed calls to the gateway, and job
 * streams that re-attach by themselves when a gateway goes away.
 *
 * ```ts
 * import { FacegenClient, jobRequest } from "@facegen/client";
 *
 * const client = new FacegenClient({ target: "127.0.0.1:50051" });
 * const run = client.run(jobRequest({ prompt: "studio portrait", reference: "face.jpg" }));
 * for await (const event of run) console.log(event.percent, event.message);
 * console.log(run.result.images[0]?.url);
 * client.close();
 * ```
 */

export { FacegenClient, JobRun, MAX_MESSAGE_BYTES, withKey } from "./client.js";
export type {
  CallSignal, ClientOptions, JobRequestInit, RetryNotice, StreamOptions, TlsOptions, WatchOptions,
} from "./client.js";
export { codeName, GatewayError, JobLostError } from "./errors.js";
export { JobFollower } from "./follower.js";
export { jobRequest, photoBytes } from "./requests.js";
export type { JobSettings, Photo } from "./requests.js";
export { backoffCap, DEFAULT_POLICY, isRetryable, Retrier } from "./retry.js";
export type { RetryPolicy } from "./retry.js";
export { Code } from "@connectrpc/connect";
export * from "./gen/facegen/v1/gateway_pb.js";
export * from "./gen/facegen/v1/common_pb.js";
