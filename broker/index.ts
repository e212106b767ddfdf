// The embedded MQTT broker: Aedes with per-account authentication, topic ACLs
// and packet-size limits. See README.md.

export {
  CredentialStore,
  CredentialError,
  generateSecret,
  hashSecret,
  hashPassword,
  verifySecret,
  verifySecretAsync,
  isHash,
  isRole,
  parseCredentials,
  ROLES,
  type Role,
  type CredentialRecord,
  type CredentialLookup,
  type CredentialChange,
  type SetOptions,
} from './credentials.ts';
export { authorize, sharedPropletSubscriptions, PROPLET_PUBLISH_KINDS, type Action, type Decision, type DenyReason } from './acl.ts';
export {
  EmbeddedBroker,
  identityOf,
  DEFAULT_MAX_PACKET_SIZE,
  DEFAULT_MANAGER_MAX_PACKET_SIZE,
  type BrokerOptions,
  type Identity,
  type LocalLink,
  type LogFn,
} from './broker.ts';
