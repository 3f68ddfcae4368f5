/**
 * When to try a call again, and when to stop: jittered backoff within an
 * outage budget and the caller's deadline. The same rules as the Python
 * client's (services/client/retry.py).
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { codeName, GatewayError } from "./errors.js";

/** How long and how often the client re-tries a call or re-attaches to a job. */
export interface RetryPolicy {
  /** Cap of the first delay; each later cap is `multiplier` times the last, up to `maxBackoffMs`. */
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** The outage budget: the longest time from a first failure until a call succeeds or an event arrives. */
  giveUpAfterMs: number;
  /** Bound of each unary attempt. */
  callTimeoutMs: number;
}

export const DEFAULT_POLICY: Readonly<RetryPolicy> = Object.freeze({
  initialBackoffMs: 100,
  maxBackoffMs: 2_000,
  multiplier: 2,
  giveUpAfterMs: 30_000,
  callTimeoutMs: 30_000,
});

/**
 * The failures that may be ridden out by repeating the call: the gateway
 * stopped, restarted or drained (UNAVAILABLE), or the connection was reset
 * on the way (connect-node reports a reset socket as ABORTED; the gateway
 * itself never answers ABORTED).
 */
export function isRetryable(code: Code): boolean {
  return code === Code.Unavailable || code === Code.Aborted;
}

/** The delay cap before retry number `attempt` (0 for the first retry). */
export function backoffCap(policy: RetryPolicy, attempt: number): number {
  return Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** Math.min(attempt, 64));
}

/** Checks a policy; throws RangeError on values that make no sense. */
export function checkPolicy(policy: RetryPolicy): RetryPolicy {
  if (!(policy.initialBackoffMs > 0 && policy.initialBackoffMs <= policy.maxBackoffMs)) {
    throw new RangeError("RetryPolicy needs 0 < initialBackoffMs <= maxBackoffMs");
  }
  if (!(policy.multiplier >= 1)) {
    throw new RangeError("RetryPolicy.multiplier must be at least 1");
  }
  if (!(policy.giveUpAfterMs >= 0 && policy.callTimeoutMs > 0)) {
    throw new RangeError("RetryPolicy needs giveUpAfterMs >= 0 and callTimeoutMs > 0");
  }
  return policy;
}

export type Clock = () => number;

/**
 * Tracks one call's (or one job stream's) failures: backoff with full
 * jitter, the outage budget and the caller's deadline (absolute, on `clock`).
 */
export class Retrier {
  /** Called before each retry: attempt (1-based), delay, status name, details, job, last seq. */
  onRetry: ((attempt: number, delayMs: number, code: string, details: string, jobId: string | undefined,
             lastSeq: bigint) => void) | undefined;
  private outageStarted: number | undefined;
  private attempts = 0;

  constructor(
    readonly policy: RetryPolicy,
    readonly deadline: number | undefined = undefined,
    private readonly clock: Clock = () => performance.now(),
    private readonly rng: () => number = Math.random,
  ) {}

  /** A Retrier whose deadline is `timeoutMs` from now (undefined: none). */
  static within(policy: RetryPolicy, timeoutMs?: number, clock: Clock = () => performance.now(),
                rng: () => number = Math.random): Retrier {
    return new Retrier(policy, timeoutMs === undefined ? undefined : clock() + timeoutMs, clock, rng);
  }

  /** Milliseconds left before the caller's deadline (never negative); undefined without one. */
  remaining(): number | undefined {
    return this.deadline === undefined ? undefined : Math.max(0, this.deadline - this.clock());
  }

  get expired(): boolean {
    return this.deadline !== undefined && this.clock() >= this.deadline;
  }

  /** The timeout of one unary attempt: the policy's, cut to the time left. */
  attemptTimeout(): number {
    const left = this.remaining();
    return left === undefined ? this.policy.callTimeoutMs : Math.min(this.policy.callTimeoutMs, left);
  }

  /** A call went through or an event arrived: the outage, if any, is over. */
  succeeded(): void {
    this.outageStarted = undefined;
    this.attempts = 0;
  }

  /**
   * Milliseconds to wait before the next attempt after a failure with `code`.
   * Throws GatewayError when it is not retryable, when the outage budget is
   * spent, or when the caller's deadline has passed (DEADLINE_EXCEEDED).
   */
  nextDelay(code: Code, details: string, jobId?: string, lastSeq: bigint = 0n, cause?: unknown): number {
    if (this.expired) {
      throw new GatewayError(Code.DeadlineExceeded, `the caller's deadline passed (last error: ${details})`,
        jobId, lastSeq, { cause });
    }
    if (!isRetryable(code)) {
      throw new GatewayError(code, details, jobId, lastSeq, { cause });
    }
    const now = this.clock();
    this.outageStarted ??= now;
    const spent = now - this.outageStarted;
    if (spent >= this.policy.giveUpAfterMs) {
      throw new GatewayError(code, `${details} (gave up after ${(spent / 1000).toFixed(1)} s and ` +
        `${this.attempts + 1} attempts)`, jobId, lastSeq, { cause });
    }
    let delay = this.rng() * backoffCap(this.policy, this.attempts);
    this.attempts += 1;
    delay = Math.max(0, Math.min(delay, this.policy.giveUpAfterMs - spent, this.remaining() ?? Infinity));
    this.onRetry?.(this.attempts, delay, codeName(code), details, jobId, lastSeq);
    return delay;
  }

  /** `nextDelay` for a unary attempt's error: its own timeout passing is retryable too. */
  unaryDelay(reason: unknown, jobId?: string): number {
    const error = ConnectError.from(reason);
    if (error.code === Code.DeadlineExceeded && !this.expired) {
      return this.nextDelay(Code.Unavailable, `no answer within ${this.policy.callTimeoutMs} ms`, jobId, 0n, reason);
    }
    return this.nextDelay(error.code, error.rawMessage, jobId, 0n, reason);
  }
}
