// CPU time and memory of other processes (Linux /proc), for benchmarks that
// run each part of the system in a process of its own.

import { readdirSync, readFileSync } from 'node:fs';

const TICKS_PER_S = 100; // USER_HZ on Linux

function statFields(pid: number): string[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command may hold spaces and parentheses: fields start after the last ')'
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined; // gone
  }
}

/** CPU seconds (user + system) a process has used so far; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  const f = statFields(pid);
  return f ? (Number(f[11]) + Number(f[12])) / TICKS_PER_S : 0;
}

/** Resident memory of a process in bytes (0 once it is gone). */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function pids(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

/** CPU seconds of a process and its direct children (PostgreSQL's postmaster and its backends). */
export function treeCpuSeconds(root: number): number {
  let total = 0;
  for (const pid of pids()) {
    const f = statFields(pid);
    if (f && (pid === root || Number(f[1]) === root)) total += (Number(f[11]) + Number(f[12])) / TICKS_PER_S;
  }
  return total;
}

/** This process's children running the named command (e.g. the Mosquitto brokers a helper spawned). */
export function childrenNamed(comm: string, parent = process.pid): number[] {
  return pids().filter((pid) => {
    const f = statFields(pid);
    if (!f || Number(f[1]) !== parent) return false;
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === comm;
    } catch {
      return false;
    }
  });
}
