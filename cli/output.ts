// What commands print: aligned tables for lists, indented JSON for one object.

export function print(x: unknown): void {
  process.stdout.write(JSON.stringify(x, null, 2) + '\n');
}

export function table(head: string[], rows: string[][]): void {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((x, i) => x.padEnd(w[i]!)).join('  ').trimEnd();
  process.stdout.write([line(head), ...rows.map(line)].join('\n') + '\n');
}
