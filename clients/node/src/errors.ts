/** The one error type the client throws for what the gateway refused or could not do. */

import { Code, ConnectError } from "@connectrpc/connect";

/**
 * A call failed for good: refused (bad input, unknown job, at capacity, ...)
 * or the gateway stayed unreachable past the outage budget.
 *
 * `code` is the gRPC status (`Code.InvalidArgument`, ...), `codeName` its
 * name as the gateway writes it (`INVALID_ARGUMENT`); `jobId` and `lastSeq`
 * say where a job stream stopped, so that the caller can
 * `watch(jobId, { afterSeq: lastSeq })` later.
 */
export class GatewayError extends Error {
  override name = "GatewayError";

  constructor(
    readonly code: Code,
    readonly details: string,
    readonly jobId?: string,
    readonly lastSeq: bigint = 0n,
    options?: { cause?: unknown },
  ) {
    super(`${codeName(code)}: ${details}`, options);
  }

  /** The status name as gRPC writes it: `UNAVAILABLE`, `INVALID_ARGUMENT`, ... */
  get codeName(): string {
    return codeName(this.code);
  }

  /** The GatewayError for any error a call threw. */
  static from(reason: unknown, jobId?: string, lastSeq: bigint = 0n): GatewayError {
    if (reason instanceof GatewayError) {
      return reason;
    }
    const error = ConnectError.from(reason);
    return new GatewayError(error.code, error.rawMessage, jobId, lastSeq, { cause: reason });
  }
}

/**
 * The gateway no longer knows a job the client was following: its gateway
 * restarted with the in-memory job store, or it ended longer ago than the
 * gateway keeps jobs. The client never submits such a job again by itself.
 */
export class JobLostError extends GatewayError {
  override name = "JobLostError";
}

/** `Code.InvalidArgument` → `INVALID_ARGUMENT`. */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
