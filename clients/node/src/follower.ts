/**
 * Following one job across broken streams: which events are new, and when to
 * re-attach. No I/O here (the Python client's services/client/resume.py does
 * the same). After a break the client watches again from the last seq it
 * handed out and drops anything at or below it; a stream that delivered the
 * terminal event is finished and never re-attached.
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { GatewayError, JobLostError } from "./errors.js";
import type { JobEvent } from "./gen/facegen/v1/gateway_pb.js";
import { Stage } from "./gen/facegen/v1/gateway_pb.js";
import type { Retrier } from "./retry.js";

export const ENDED_EARLY = "the event stream ended before the job's terminal event";

/** Where a job stream stands: the job, the last seq handed out, the terminal event once seen. */
export class JobFollower {
  terminal: JobEvent | undefined;
  /** Times the stream was attached again after a break. */
  resumes = 0;
  /** The gateway has shown that it knows the job (it answered Submit, or sent one of its events). */
  private known = false;

  constructor(
    readonly retrier: Retrier,
    public jobId: string | undefined = undefined,
    public lastSeq: bigint = 0n,
  ) {}

  get finished(): boolean {
    return this.terminal !== undefined;
  }

  /** The Submit that created (or found) the job answered with `jobId`. */
  submitted(jobId: string): void {
    this.jobId = jobId;
    this.known = true;
    this.retrier.succeeded();
  }

  /** True when `event` is new and goes to the caller; false for a replay of one already handed out. */
  accept(event: JobEvent): boolean {
    if (this.terminal !== undefined || event.seq <= this.lastSeq) {
      return false;
    }
    this.lastSeq = event.seq;
    this.known = true;
    this.retrier.succeeded();
    if (event.stage === Stage.TERMINAL) {
      this.terminal = event;
    }
    return true;
  }

  /**
   * Whether a run that stops on `reason` may leave a job running that it
   * should cancel: not when the gateway refused the submit or forgot the job.
   */
  mayHaveLiveJob(reason: unknown): boolean {
    if (this.finished || reason instanceof JobLostError) {
      return false;
    }
    if (reason instanceof GatewayError && this.jobId === undefined) {
      return reason.code === Code.Unavailable || reason.code === Code.DeadlineExceeded;
    }
    return true;
  }

  /**
   * Milliseconds to wait before watching again after the stream broke with
   * `reason` (undefined: it ended cleanly without the terminal event).
   * Throws JobLostError when the gateway no longer knows the job, GatewayError
   * when the failure is not one to ride out or the budget is spent.
   */
  reattachDelay(reason: unknown): number {
    const error = reason === undefined ? new ConnectError(ENDED_EARLY, Code.Unavailable) : ConnectError.from(reason);
    if (error.code === Code.NotFound && this.known) {
      throw new JobLostError(error.code, `the gateway no longer knows job ${this.jobId} after seq ${this.lastSeq} ` +
        `(its gateway restarted with the in-memory job store, or it expired): ${error.rawMessage}`,
        this.jobId, this.lastSeq, { cause: reason });
    }
    const delay = this.retrier.nextDelay(error.code, error.rawMessage, this.jobId, this.lastSeq, reason);
    this.resumes += 1;
    return delay;
  }
}
