// Leader election on a coordination.k8s.io/v1 Lease, as client-go does it
// (client-node 1.4 has none):
// - the leader renews the Lease (renewTime) every renewIntervalMs;
// - a candidate takes the Lease when it is free (no holder: released), or
//   when its record has not changed for leaseDurationSeconds as the
//   candidate's own clock measures it (no trust in other machines' clocks);
// - every write carries the resourceVersion read, so two candidates never
//   both win: the loser gets a 409;
// - a leader that cannot renew for renewDeadlineMs, or finds another holder,
//   stops leading at once;
// - stop({release: true}) hands the Lease back (empty holder), so a
//   successor need not wait out the lease; a process that dies does not.

import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import { apiMessage, isConflict, isNotFound, sleep, type Kube, type Log } from './kube.ts';

export interface LeaderElectionConfig {
  namespace: string;
  name: string;
  /** This replica: the Lease's holderIdentity. */
  identity: string;
  /** Default 15. */
  leaseDurationSeconds?: number;
  /** How often the leader renews; default 2000. */
  renewIntervalMs?: number;
  /** How often a candidate looks at the Lease; default 2000 (it also looks when the lease would expire). */
  retryIntervalMs?: number;
  /** A leader that could not renew for this long stops leading; default 2/3 of the lease duration. */
  renewDeadlineMs?: number;
}

export interface LeaderCallbacks {
  onStartedLeading(): Promise<void> | void;
  onStoppedLeading(): Promise<void> | void;
}

export class LeaderElector {
  private leading = false;
  private stopper = new AbortController();
  private loop?: Promise<void>;
  private lastRenew = 0;
  /** The Lease record last seen, and when (local clock). */
  private observed = { record: '', at: 0, durationMs: 0 };

  constructor(
    private kube: Kube,
    private c: LeaderElectionConfig,
    private cb: LeaderCallbacks,
    private log: Log,
  ) {}

  get isLeader(): boolean {
    return this.leading;
  }

  private get durationMs(): number {
    return (this.c.leaseDurationSeconds ?? 15) * 1000;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Stops campaigning; with `release` (the default) a leader hands the Lease back first. */
  async stop(o: { release?: boolean } = {}): Promise<void> {
    this.stopper.abort();
    await this.loop;
    if (this.leading) {
      this.leading = false;
      // stop acting first: a successor may start the moment the Lease is free
      await this.cb.onStoppedLeading();
      if (o.release ?? true) await this.release().catch((e) => this.log('warn', 'cannot release the lease', { error: apiMessage(e) }));
    }
  }

  private async run(): Promise<void> {
    const renewDeadline = this.c.renewDeadlineMs ?? (this.durationMs * 2) / 3;
    while (!this.stopper.signal.aborted) {
      let held = false;
      try {
        held = await this.tryAcquireOrRenew();
      } catch (e) {
        this.log('warn', 'lease request failed', { lease: `${this.c.namespace}/${this.c.name}`, error: apiMessage(e) });
      }
      if (this.stopper.signal.aborted) break;
      if (held) {
        this.lastRenew = Date.now();
        if (!this.leading) {
          this.leading = true;
          this.log('info', 'became leader', { lease: `${this.c.namespace}/${this.c.name}`, identity: this.c.identity });
          await this.cb.onStartedLeading();
        }
      } else if (this.leading && (this.observed.record.startsWith(`${this.c.identity}\n`) === false || Date.now() - this.lastRenew > renewDeadline)) {
        this.leading = false;
        this.log('warn', 'lost the lease: stopping', { lease: `${this.c.namespace}/${this.c.name}`, identity: this.c.identity });
        await this.cb.onStoppedLeading();
      }
      await sleep(this.nextDelay(), this.stopper.signal);
    }
  }

  /** A leader renews on its interval; a candidate looks on its own, and right when the lease would expire. */
  private nextDelay(): number {
    if (this.leading) return this.c.renewIntervalMs ?? 2000;
    const retry = this.c.retryIntervalMs ?? 2000;
    const expiresIn = this.observed.at + this.observed.durationMs - Date.now();
    return expiresIn > 0 ? Math.max(20, Math.min(retry, expiresIn + 10)) : retry;
  }

  private observe(lease: V1Lease): void {
    const s = lease.spec ?? {};
    const record = `${s.holderIdentity ?? ''}\n${String(s.renewTime ?? '')}\n${s.leaseTransitions ?? 0}`;
    if (record !== this.observed.record) this.observed = { record, at: Date.now(), durationMs: (s.leaseDurationSeconds ?? this.durationMs / 1000) * 1000 };
  }

  /** True when this replica holds the Lease after the call. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity } = this.c;
    const now = new V1MicroTime();
    const seconds = this.durationMs / 1000;
    let lease: V1Lease;
    try {
      lease = await this.kube.coordination.readNamespacedLease({ name, namespace });
    } catch (e) {
      if (!isNotFound(e)) throw e;
      const body: V1Lease = {
        metadata: { name, namespace },
        spec: { holderIdentity: identity, leaseDurationSeconds: seconds, acquireTime: now, renewTime: now, leaseTransitions: 0 },
      };
      try {
        this.observe(await this.kube.coordination.createNamespacedLease({ namespace, body }));
        return true;
      } catch (err) {
        if (isConflict(err)) return false;
        throw err;
      }
    }
    this.observe(lease);
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const expired = Date.now() - this.observed.at >= this.observed.durationMs;
    if (holder && holder !== identity && !expired) return false;
    const mine = holder === identity;
    const body: V1Lease = {
      metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion },
      spec: {
        holderIdentity: identity,
        leaseDurationSeconds: seconds,
        acquireTime: mine ? spec.acquireTime : now,
        renewTime: now,
        leaseTransitions: (spec.leaseTransitions ?? 0) + (mine ? 0 : 1),
      },
    };
    try {
      this.observe(await this.kube.coordination.replaceNamespacedLease({ name, namespace, body }));
      return true;
    } catch (e) {
      if (isConflict(e)) return false;
      throw e;
    }
  }

  private async release(): Promise<void> {
    const { namespace, name, identity } = this.c;
    const lease = await this.kube.coordination.readNamespacedLease({ name, namespace });
    if (lease.spec?.holderIdentity !== identity) return;
    const now = new V1MicroTime();
    const body: V1Lease = { metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion }, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: now } };
    await this.kube.coordination.replaceNamespacedLease({ name, namespace, body });
  }
}
