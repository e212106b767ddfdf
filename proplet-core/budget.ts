// The device's fixed RAM budget. Every accepted task holds a reservation of its
// module bytes plus its linear memory until it ends; a task whose reservation
// does not fit in what is free is refused, never squeezed in.

export const PAGE_BYTES = 65536;

export interface Need {
  module: number;
  linear: number;
}

export class RamBudget {
  private used = 0;
  private readonly held = new Map<string, number>();

  constructor(readonly total: number) {
    if (!Number.isSafeInteger(total) || total <= 0) throw new RangeError(`RAM budget must be a positive integer of bytes, got ${total}`);
  }

  get usedBytes(): number {
    return this.used;
  }
  get freeBytes(): number {
    return this.total - this.used;
  }
  holds(key: string): number {
    return this.held.get(key) ?? 0;
  }

  /** Reserves `bytes` for `key` (replacing what it held) when they fit; false leaves everything as it was. */
  reserve(key: string, bytes: number): boolean {
    const had = this.held.get(key) ?? 0;
    if (bytes < 0 || !Number.isFinite(bytes) || this.used - had + bytes > this.total) return false;
    this.used += bytes - had;
    this.held.set(key, bytes);
    return true;
  }

  release(key: string): void {
    const had = this.held.get(key);
    if (had === undefined) return;
    this.used -= had;
    this.held.delete(key);
  }

  /** Why `need` does not fit beside what `key` already holds, in numbers; undefined when it fits. */
  shortfall(need: Need, key?: string): string | undefined {
    const bytes = need.module + need.linear;
    const free = this.freeBytes + (key ? this.holds(key) : 0);
    if (bytes <= free) return undefined;
    return `needs ${bytes} bytes of RAM (module ${need.module} + linear memory ${need.linear}), ${free} of the ${this.total}-byte budget free`;
  }
}
