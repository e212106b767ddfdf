export * from './messages.ts';
export * from './codec.ts';
export { ProtocolError, isId, type ErrorReason } from './schema.ts';
export { crc32 } from './crc32.ts';
export * from './fl-update.ts';
export { sha256Digest } from './digest.ts';
export * from './propeller.ts';
