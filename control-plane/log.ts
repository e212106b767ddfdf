// One structured line per event on stderr. Quiet unless asked: tests and the
// CLI pass their own level.

export type Level = 'debug' | 'info' | 'warn' | 'error';
export type Logger = (level: Level, msg: string, fields?: Record<string, unknown>) => void;

const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function createLogger(min: Level | 'silent' = 'info', component = 'propeller'): Logger {
  if (min === 'silent') return () => {};
  const threshold = ORDER[min];
  return (level, msg, fields) => {
    if (ORDER[level] < threshold) return;
    process.stderr.write(JSON.stringify({ t: new Date().toISOString(), level, c: component, msg, ...fields }) + '\n');
  };
}

export const silent: Logger = () => {};
