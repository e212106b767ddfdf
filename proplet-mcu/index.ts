// The constrained proplet profile: see README.md and docs/mcu.md.
export { McuProplet, MCU_DEFAULTS, initialMemory, type McuPropletOptions, type McuState, type McuStats, type McuEvents, type Log } from './device.ts';
export { ModuleDownload, DownloadError, type Ask, type DownloadFaults, type DownloadOptions } from './download.ts';
export { RamBudget, PAGE_BYTES } from '../proplet-core/budget.ts';
export { Backoff, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.ts';
export { aliveMsg, chunkMessageBytes, chunkRequestMsg, registerMsg, resultBase, willMsg, type DeviceProfile } from './messages.ts';
export { Fleet, startFleet, fleetUuid, formatCounts, type FleetCounts, type FleetOptions } from './sim.ts';
