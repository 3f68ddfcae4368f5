/**
 * The facegen gateway client for Node: typed calls over connect-node's gRPC
 * transport, and job streams that re-attach by themselves.
 *
 * `run()` submits with an idempotency key (the request's or a new one), then
 * follows the job with Watch. When a stream breaks (UNAVAILABLE, a reset
 * connection) it watches again after the last event it handed out, with
 * jittered backoff, until the outage budget or the caller's deadline is spent.
 * Every event reaches the caller once, in order. Leaving a run before its
 * terminal event (`break`, an exception, an aborted `signal`) cancels the job.
 */

import { randomUUID } from "node:crypto";
import type { SecureClientSessionOptions } from "node:http2";
import { setTimeout as sleep } from "node:timers/promises";
import { clone, create, isMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { JobFollower } from "./follower.js";
import type { ModelInfo } from "./gen/facegen/v1/common_pb.js";
import {
  GatewayService,
  JobRequestSchema,
  type Job,
  type JobEvent,
  type JobRequest,
  type JobResult,
  type JobState,
  type SubmitResponse,
} from "./gen/facegen/v1/gateway_pb.js";
import { checkPolicy, DEFAULT_POLICY, Retrier, type RetryPolicy } from "./retry.js";

/** gRPC message limit on every hop of facegen: room for the largest allowed photos and results. */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;
/** How long the clean-up after the caller left may take (Cancel waits up to 5 s for the job's end). */
const CANCEL_TIMEOUT_MS = 10_000;

/** What the client tells about each retry (for a log line or a metric). */
export interface RetryNotice {
  jobId: string | undefined;
  attempt: number;
  delayMs: number;
  codeName: string;
  details: string;
  lastSeq: bigint;
}

/** TLS settings beyond Node's defaults: a private CA, a client certificate, the name to check. */
export interface TlsOptions {
  /** PEM of the CA that signs the gateway's certificate (default: Node's root certificates). */
  ca?: string | Buffer;
  /** PEM client certificate, for a gateway that requires one (with `key`). */
  cert?: string | Buffer;
  /** PEM private key of `cert`. */
  key?: string | Buffer;
  /** The name the gateway's certificate must carry, when it is not the target's host (e.g. through a port-forward). */
  serverName?: string;
}

export interface ClientOptions {
  /** The gateway: `host:port`, or a URL (`http://host:port`, `https://host:port`). */
  target: string;
  /** Bearer token, when the gateway requires one. */
  token?: string;
  /** TLS for a `host:port` target (a URL says it by its scheme); an object turns it on with these settings. */
  tls?: boolean | TlsOptions;
  /** Changes to the retry policy (defaults: DEFAULT_POLICY). */
  policy?: Partial<RetryPolicy>;
  /** Called before each retry and re-attach. */
  onRetry?: (notice: RetryNotice) => void;
}

export interface StreamOptions {
  /** Aborting it stops the stream (and cancels the job of a run). */
  signal?: AbortSignal;
  /** Bound of the whole stream; when it passes, a run's job is cancelled. */
  timeoutMs?: number;
}

export interface WatchOptions extends StreamOptions {
  /** Replay events after this seq (0: from the first). */
  afterSeq?: bigint | number;
}

export interface CallSignal {
  signal?: AbortSignal;
}

export type JobRequestInit = JobRequest | MessageInitShape<typeof JobRequestSchema>;

/** The request with an idempotency key: its own, or a copy with a new random one. */
export function withKey(request: JobRequestInit): JobRequest {
  const message = isMessage(request, JobRequestSchema) ? request : create(JobRequestSchema, request);
  if (message.idempotencyKey) {
    return message;
  }
  const keyed = clone(JobRequestSchema, message);
  keyed.idempotencyKey = `facegen-client-${randomUUID()}`;
  return keyed;
}

/** Node's TLS options for `tls` (only what is set: Node's defaults stay for the rest). */
function secureSessionOptions(tls: TlsOptions): SecureClientSessionOptions {
  const { ca, cert, key, serverName } = tls;
  if ((cert === undefined) !== (key === undefined)) {
    throw new TypeError("tls.cert and tls.key go together: set both, or neither");
  }
  return {
    ...(ca !== undefined && { ca }),
    ...(cert !== undefined && { cert, key }),
    ...(serverName !== undefined && { servername: serverName }),
  };
}

/** A client of the gateway that re-tries and re-attaches by itself. Call `close()` when done. */
export class FacegenClient {
  readonly policy: RetryPolicy;
  /** The generated connect client, for calls this wrapper does not cover. */
  readonly stub: Client<typeof GatewayService>;
  private readonly sessions: Http2SessionManager;

  constructor(private readonly options: ClientOptions) {
    this.policy = checkPolicy({ ...DEFAULT_POLICY, ...options.policy });
    const baseUrl = /^https?:\/\//.test(options.target)
      ? options.target
      : `${options.tls ? "https" : "http"}://${options.target}`;
    // Pings notice a gateway that vanished without closing the connection (the gateway accepts one every 10 s).
    this.sessions = new Http2SessionManager(baseUrl, { pingIntervalMs: 20_000, pingTimeoutMs: 10_000 },
      typeof options.tls === "object" ? secureSessionOptions(options.tls) : undefined);
    const interceptors: Interceptor[] = [];
    if (options.token) {
      const authorization = `Bearer ${options.token}`;
      interceptors.push((next) => (request) => {
        request.header.set("authorization", authorization);
        return next(request);
      });
    }
    const transport = createGrpcTransport({
      baseUrl, sessionManager: this.sessions, interceptors,
      readMaxBytes: MAX_MESSAGE_BYTES, writeMaxBytes: MAX_MESSAGE_BYTES,
    });
    this.stub = createClient(GatewayService, transport);
  }

  /** Closes the connection (and any stream still open on it). */
  close(): void {
    this.sessions.abort();
  }

  /**
   * Submits the job and follows it to its end: `for await` over the run, then
   * read `result`. Leaving early (or aborting `signal`) cancels the job.
   */
  run(request: JobRequestInit, options: StreamOptions = {}): JobRun {
    return new JobRun(this, new JobFollower(this.retrier(options.timeoutMs)), options, withKey(request));
  }

  /** Follows a job from after `afterSeq` to its end; leaving early does not cancel it. */
  watch(jobId: string, options: WatchOptions = {}): JobRun {
    const follower = new JobFollower(this.retrier(options.timeoutMs), jobId, BigInt(options.afterSeq ?? 0));
    return new JobRun(this, follower, options);
  }

  /** Submits a job (with an idempotency key, as `run` does) and returns its id at once. */
  submit(request: JobRequestInit, options: CallSignal = {}): Promise<SubmitResponse> {
    const keyed = withKey(request);
    return this.unary((call) => this.stub.submit(keyed, call), this.retrier(), options.signal);
  }

  /** The job's state, stage, percent, last seq and, once ended, result. */
  get(jobId: string, options: CallSignal = {}): Promise<Job> {
    return this.unary((call) => this.stub.get({ jobId }, call), this.retrier(), options.signal, jobId);
  }

  /** Cancels the job everywhere; resolves to its state after (an ended job keeps its own). */
  async cancel(jobId: string, options: CallSignal = {}): Promise<JobState> {
    return (await this.unary((call) => this.stub.cancel({ jobId }, call), this.retrier(), options.signal, jobId)).state;
  }

  /** The generator's models, with their limits. */
  async listModels(options: CallSignal = {}): Promise<ModelInfo[]> {
    return (await this.unary((call) => this.stub.listModels({}, call), this.retrier(), options.signal)).models;
  }

  /** @internal A Retrier with this client's policy, deadline and retry notices. */
  retrier(timeoutMs?: number): Retrier {
    const retrier = Retrier.within(this.policy, timeoutMs);
    const notify = this.options.onRetry;
    if (notify) {
      retrier.onRetry = (attempt, delayMs, code, details, jobId, lastSeq) =>
        notify({ attempt, delayMs, codeName: code, details, jobId, lastSeq });
    }
    return retrier;
  }

  /** @internal One unary call, repeated while the failure is retryable. */
  async unary<T>(call: (options: CallOptions) => Promise<T>, retrier: Retrier, signal?: AbortSignal,
                 jobId?: string): Promise<T> {
    for (;;) {
      try {
        const reply = await call({ signal, timeoutMs: retrier.attemptTimeout() });
        retrier.succeeded();
        return reply;
      } catch (error) {
        signal?.throwIfAborted();
        await sleep(retrier.unaryDelay(error, jobId), undefined, { signal });
      }
    }
  }
}

/**
 * A job's events in order, each exactly once, across broken streams, until
 * the terminal one. Read it once with `for await`, or `await wait()`.
 */
export class JobRun implements AsyncIterable<JobEvent> {
  /** For a run: whether its submit made the job (false: the key found a job made before). */
  created: boolean | undefined;
  private started = false;
  /** A run submits first, and owns its job (cancels it when left early). */
  private readonly ownsJob: boolean;

  constructor(
    private readonly client: FacegenClient,
    private readonly follower: JobFollower,
    private readonly options: StreamOptions,
    /** The run's request, with its photos: let go once the submit has answered. */
    private request?: JobRequest,
  ) {
    this.ownsJob = request !== undefined;
  }

  /** The job's id, once known (a run knows it when its submit has answered). */
  get jobId(): string | undefined {
    return this.follower.jobId;
  }

  /** The seq of the last event handed out. */
  get lastSeq(): bigint {
    return this.follower.lastSeq;
  }

  /** How many times the stream was attached again after a break. */
  get resumes(): number {
    return this.follower.resumes;
  }

  /** The terminal event, once handed out. */
  get terminal(): JobEvent | undefined {
    return this.follower.terminal;
  }

  /** The job's result; throws before the terminal event was handed out. */
  get result(): JobResult {
    const result = this.follower.terminal?.result;
    if (result === undefined) {
      throw new Error("the job has not ended yet: read the run to its end first");
    }
    return result;
  }

  [Symbol.asyncIterator](): AsyncGenerator<JobEvent, void, undefined> {
    if (this.started) {
      throw new Error("a JobRun is read once");
    }
    this.started = true;
    return this.follow();
  }

  /** Reads the remaining events and resolves to the result. */
  async wait(): Promise<JobResult> {
    for await (const _event of this) {
      // Only the result is wanted.
    }
    return this.result;
  }

  /** Cancels the job; the stream then ends with its CANCELLED terminal event. */
  cancel(): Promise<JobState> {
    if (this.jobId === undefined) {
      throw new Error("the job id is not known yet");
    }
    return this.client.cancel(this.jobId);
  }

  private async *follow(): AsyncGenerator<JobEvent, void, undefined> {
    const { follower, client } = this;
    const signal = this.options.signal;
    let stopped: unknown;
    try {
      const request = this.request;
      if (request !== undefined) {
        const reply = await client.unary((call) => client.stub.submit(request, call), follower.retrier, signal);
        this.created = reply.created;
        follower.submitted(reply.jobId);
        this.request = undefined;
      }
      while (!follower.finished) {
        let broken: unknown;
        const attempt = new AbortController();
        const callSignal = signal ? AbortSignal.any([signal, attempt.signal]) : attempt.signal;
        try {
          const events = client.stub.watch({ jobId: follower.jobId, afterSeq: follower.lastSeq },
            { signal: callSignal, timeoutMs: follower.retrier.remaining() });
          for await (const event of events) {
            if (follower.accept(event)) {
              yield event;
              if (follower.finished) {
                return;
              }
            }
          }
        } catch (error) {
          signal?.throwIfAborted();
          broken = error;
        } finally {
          attempt.abort();
        }
        await sleep(follower.reattachDelay(broken), undefined, { signal });
      }
    } catch (error) {
      stopped = error;
      throw error;
    } finally {
      if (this.ownsJob && follower.mayHaveLiveJob(stopped)) {
        await this.abandon();
      }
    }
  }

  /** Cancels the job this run owns, once, without throwing: the caller is already leaving. */
  private async abandon(): Promise<void> {
    const { stub } = this.client;
    try {
      // Left while the submit was in flight: the key finds the job if it was made.
      const jobId = this.follower.jobId ??
        (await stub.submit(this.request as JobRequest, { timeoutMs: CANCEL_TIMEOUT_MS })).jobId;
      await stub.cancel({ jobId }, { timeoutMs: CANCEL_TIMEOUT_MS });
    } catch {
      // Nothing more to do: the gateway is unreachable or the job is gone.
    }
  }
}
