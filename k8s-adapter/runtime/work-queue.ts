// A work queue of keys (namespace/name), as controllers use it:
// - a key waiting in the queue is there once, however often it is added;
// - one key is processed by one worker at a time: a key added while it is
//   being processed runs again once, after the current run;
// - a run that throws is retried after a delay that doubles per key
//   (baseDelayMs, 2x, 4x, ... up to maxDelayMs) until a run succeeds;
// - a run may ask to run again after some time ({requeueAfterMs}).

export interface ProcessResult {
  requeueAfterMs?: number;
}

export type Processor = (key: string) => Promise<ProcessResult | void>;

export interface WorkQueueOptions {
  /** Keys processed at once (distinct keys only). */
  concurrency?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Told when a run fails, before its retry is scheduled. */
  onError?: (key: string, error: unknown, retryInMs: number) => void;
}

export class WorkQueue {
  private ready: string[] = [];
  private queued = new Set<string>();
  private active = new Set<string>();
  private dirty = new Set<string>();
  private timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private failures = new Map<string, number>();
  private running = 0;
  private closed = false;
  private idle?: () => void;

  constructor(
    private process: Processor,
    private o: WorkQueueOptions = {},
  ) {}

  add(key: string): void {
    if (this.closed) return;
    if (this.active.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.ready.push(key);
    this.pump();
  }

  /** Adds the key after `ms`, unless it is already due sooner. */
  addAfter(key: string, ms: number): void {
    if (this.closed) return;
    if (ms <= 0) return this.add(key);
    const at = Date.now() + ms;
    const pending = this.timers.get(key);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    this.timers.set(key, { at, timer });
  }

  /** The delay of the key's next retry, counting this failure. */
  private backoff(key: string): number {
    const n = (this.failures.get(key) ?? 0) + 1;
    this.failures.set(key, n);
    return Math.min((this.o.baseDelayMs ?? 100) * 2 ** Math.min(n - 1, 30), this.o.maxDelayMs ?? 60_000);
  }

  get length(): number {
    return this.ready.length;
  }

  /** Stops taking keys; resolves when the runs in progress have ended. */
  async close(): Promise<void> {
    this.closed = true;
    for (const { timer } of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    this.ready = [];
    this.queued.clear();
    this.dirty.clear();
    if (this.running > 0) await new Promise<void>((r) => (this.idle = r));
  }

  private pump(): void {
    const max = this.o.concurrency ?? 4;
    while (!this.closed && this.running < max && this.ready.length > 0) {
      const key = this.ready.shift()!;
      this.queued.delete(key);
      // a run now makes a pending delayed add redundant: the run decides when next
      const pending = this.timers.get(key);
      if (pending) {
        clearTimeout(pending.timer);
        this.timers.delete(key);
      }
      this.active.add(key);
      this.running++;
      void this.runOne(key);
    }
  }

  private async runOne(key: string): Promise<void> {
    try {
      const r = await this.process(key);
      this.failures.delete(key);
      if (r?.requeueAfterMs !== undefined) this.addAfter(key, r.requeueAfterMs);
    } catch (e) {
      const delay = this.backoff(key);
      this.o.onError?.(key, e, delay);
      this.addAfter(key, delay);
    } finally {
      this.active.delete(key);
      this.running--;
      if (this.dirty.delete(key)) this.add(key);
      if (this.closed && this.running === 0) this.idle?.();
      this.pump();
    }
  }
}
