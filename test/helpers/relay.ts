// A TCP relay to a loopback port that can be shut: a network partition of whoever
// connects through it. Shut, it refuses new connections; connections already
// through it end when the far side does.

import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

export interface Relay {
  url: string;
  open: boolean;
  close(): void;
}

export async function tcpRelay(port: number): Promise<Relay> {
  const socks = new Set<Socket>();
  const g: Relay = {
    url: '',
    open: true,
    close: () => {
      server.close();
      for (const s of socks) s.destroy();
    },
  };
  const server = createServer((down) => {
    if (!g.open) return void down.destroy();
    const up = connect(port, '127.0.0.1');
    for (const s of [down, up]) {
      socks.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        socks.delete(s);
        down.destroy();
        up.destroy();
      });
    }
    down.pipe(up).pipe(down);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  g.url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return g;
}
