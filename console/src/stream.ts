// The one event stream (GET /events). EventSource reconnects by itself after a
// dropped connection; when the browser gives up (an HTTP error such as 401) we
// reopen it ourselves with a growing delay. Every (re)connection starts with a
// 'hello', after which the page fetches the state again, so nothing missed
// while disconnected is lost; a 'gap' (the server dropped frames for us) does
// the same.

import { signal } from './signal.ts';

export type StreamState = { status: 'connecting' | 'live' | 'reconnecting'; attempts: number; since: number; recovered: boolean };
export const streamState = signal<StreamState>({ status: 'connecting', attempts: 0, since: Date.now(), recovered: false });

type Handler = (data: unknown) => void;

export class EventStream {
  private es?: EventSource;
  private handlers = new Map<string, Set<Handler>>();
  private retry?: ReturnType<typeof setTimeout>;
  private wire = false;
  private closed = false;
  private everLive = false;

  /** `probe` runs when the browser gives up on the stream: an API call that shows the sign-in prompt on a 401. */
  constructor(
    private onResync: () => void,
    private probe: () => void = () => {},
  ) {}

  on(event: string, h: Handler): () => void {
    let s = this.handlers.get(event);
    if (!s) this.handlers.set(event, (s = new Set()));
    s.add(h);
    return () => s!.delete(h);
  }

  /** Opens (or reopens, when `wire` changes) the stream. */
  open(wire: boolean): void {
    if (this.es && this.wire === wire && this.es.readyState !== EventSource.CLOSED) return;
    // a deliberate reopen (the wire view opened or closed) is not a recovery
    if (this.es) this.everLive = false;
    this.wire = wire;
    this.connect();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.es?.close();
  }

  private connect(): void {
    clearTimeout(this.retry);
    this.es?.close();
    const es = new EventSource(this.wire ? '/events?wire=1' : '/events', { withCredentials: true });
    this.es = es;
    es.addEventListener('hello', () => {
      const recovered = this.everLive;
      this.everLive = true;
      streamState.set({ status: 'live', attempts: 0, since: Date.now(), recovered });
      this.onResync();
    });
    es.addEventListener('gap', () => this.onResync());
    for (const name of ['proplets', 'tasks', 'fl', 'wire']) {
      es.addEventListener(name, (ev) => {
        const data = JSON.parse((ev as MessageEvent<string>).data) as unknown;
        this.handlers.get(name)?.forEach((h) => h(data));
      });
    }
    es.onerror = () => {
      if (es !== this.es || this.closed) return;
      const prev = streamState.get();
      streamState.set({ status: 'reconnecting', attempts: prev.attempts + 1, since: prev.status === 'reconnecting' ? prev.since : Date.now(), recovered: false });
      // CLOSED: the browser will not retry (an HTTP error): we do, backing off
      if (es.readyState === EventSource.CLOSED) {
        this.probe();
        const delay = Math.min(15_000, 500 * 2 ** Math.min(prev.attempts, 5));
        this.retry = setTimeout(() => this.connect(), delay);
      }
    };
  }
}
