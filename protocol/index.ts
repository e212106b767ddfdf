export * from './messages.ts';
export * from './codec.ts';
export { ProtocolError, isId, type ErrorReason } from './schema.ts';
