// `propeller proplet rm ID` (also `proplet delete`): forget a proplet and
// revoke its MQTT credentials, so that it can no longer connect.

import { UsageError, type Command } from './args.ts';
import { print } from './output.ts';
import { apiClient, apiHelp, apiOptions } from './settings.ts';

export const propletRm: Command = {
  usage: 'propeller proplet rm ID',
  summary: 'remove a proplet: its record and its MQTT credentials',
  options: { ...apiOptions },
  help: `${apiHelp}
  A connected proplet is disconnected. Its tasks are placed elsewhere as when it fails.`,
  async run(v, pos) {
    if (pos.length !== 1) throw new UsageError('expected exactly one proplet id');
    print(await apiClient(v).removeProplet(pos[0]!));
  },
};
