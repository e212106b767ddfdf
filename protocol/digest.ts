// The content digest every part of the protocol names modules and models by:
// `sha256:<64 lowercase hex>` of the bytes (OCI's form too).

import { createHash } from 'node:crypto';

export function sha256Digest(bytes: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(bytes).digest('hex');
}
