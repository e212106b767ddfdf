// A small schema builder: every value is an OpenAPI v3 schema, as a CRD's
// structural schema wants it, that also carries the TypeScript type it
// describes. types.ts writes each field once; the TS types (TypeOf) and the
// CRDs' schemas both come from it, so the two cannot drift apart.
//
// Kubernetes 1.20 has no CEL, so every rule is plain OpenAPI: enum, minimum,
// pattern, required, and anyOf of `required` lists.

/** The part of OpenAPI v3 (apiextensions.k8s.io/v1 JSONSchemaProps) that the CRDs use. */
export interface OpenApi {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  description?: string;
  properties?: Record<string, OpenApi>;
  required?: string[];
  additionalProperties?: OpenApi;
  items?: OpenApi;
  enum?: string[];
  format?: 'date-time' | 'int32' | 'int64' | 'double';
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  default?: unknown;
  anyOf?: OpenApi[];
  'x-kubernetes-preserve-unknown-fields'?: true;
  'x-kubernetes-int-or-string'?: true;
  'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  'x-kubernetes-list-map-keys'?: string[];
}

declare const VALUE: unique symbol;

/** An OpenAPI schema for values of type V. */
export interface Schema<V> {
  readonly openapi: OpenApi;
  /** Never set: only carries V for TypeOf. */
  readonly [VALUE]?: V;
}

/** A property that must be present in its object. */
export interface RequiredProp<V> extends Schema<V> {
  readonly required: true;
}

export type TypeOf<S> = S extends Schema<infer V> ? V : never;

type Props = Record<string, Schema<unknown>>;
type RequiredKeys<P extends Props> = { [K in keyof P]: P[K] extends RequiredProp<unknown> ? K : never }[keyof P];
type Flat<T> = { [K in keyof T]: T[K] } & {};
export type ObjectOf<P extends Props> = Flat<
  { -readonly [K in RequiredKeys<P>]: TypeOf<P[K]> } & { -readonly [K in Exclude<keyof P, RequiredKeys<P>>]?: TypeOf<P[K]> }
>;

interface Doc {
  description?: string;
}

function make<V>(openapi: OpenApi): Schema<V> {
  return { openapi };
}

/** Copies only the options that are set, so the YAML carries no empty keys. */
function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export function required<V>(s: Schema<V>): RequiredProp<V> {
  return { openapi: s.openapi, required: true };
}

export function string(o: Doc & { pattern?: string; minLength?: number; maxLength?: number } = {}): Schema<string> {
  return make({ type: 'string', ...defined(o) });
}

/** An RFC 3339 timestamp, as Kubernetes writes metav1.Time. */
export function time(o: Doc = {}): Schema<string> {
  return make({ type: 'string', format: 'date-time', ...defined(o) });
}

export function enumOf<const E extends readonly string[]>(values: E, o: Doc & { default?: E[number] } = {}): Schema<E[number]> {
  return make({ type: 'string', enum: [...values], ...defined(o) });
}

export function integer(o: Doc & { minimum?: number; maximum?: number; default?: number; format?: 'int32' | 'int64' } = {}): Schema<number> {
  return make({ type: 'integer', ...defined(o) });
}

export function number(o: Doc & { minimum?: number; maximum?: number } = {}): Schema<number> {
  return make({ type: 'number', ...defined(o) });
}

export function boolean(o: Doc = {}): Schema<boolean> {
  return make({ type: 'boolean', ...defined(o) });
}

export function array<V>(items: Schema<V>, o: Doc & { minItems?: number; listType?: 'atomic' | 'set' | 'map'; mapKeys?: string[] } = {}): Schema<V[]> {
  const { listType, mapKeys, ...rest } = o;
  return make({
    type: 'array',
    items: items.openapi,
    ...defined(rest),
    ...(listType ? { 'x-kubernetes-list-type': listType } : {}),
    ...(mapKeys ? { 'x-kubernetes-list-map-keys': mapKeys } : {}),
  });
}

/** A map with string keys and values of one schema (map[string]T). */
export function record<V>(values: Schema<V>, o: Doc = {}): Schema<Record<string, V>> {
  return make({ type: 'object', additionalProperties: values.openapi, ...defined(o) });
}

/**
 * An object with known properties. `atLeastOne` lists property sets of
 * which at least one must be present (OpenAPI anyOf of required lists, the
 * only cross-field rule a structural schema can state).
 */
export function object<P extends Props>(props: P, o: Doc & { atLeastOne?: (keyof P & string)[][] } = {}): Schema<ObjectOf<P>> {
  const req = Object.entries(props)
    .filter(([, s]) => (s as Partial<RequiredProp<unknown>>).required)
    .map(([k]) => k);
  return make({
    type: 'object',
    ...defined({ description: o.description }),
    properties: Object.fromEntries(Object.entries(props).map(([k, s]) => [k, s.openapi])),
    ...(req.length ? { required: req } : {}),
    ...(o.atLeastOne ? { anyOf: o.atLeastOne.map((keys) => ({ required: keys })) } : {}),
  });
}

/** A free-form JSON object (map[string]interface{}): kept as sent, not validated. */
export function freeform(o: Doc = {}): Schema<Record<string, unknown>> {
  return make({ type: 'object', 'x-kubernetes-preserve-unknown-fields': true, ...defined(o) });
}

/** Any JSON value (a task's results: a number, a string, an object...). */
export function anyValue(o: Doc = {}): Schema<unknown> {
  return make({ 'x-kubernetes-preserve-unknown-fields': true, ...defined(o) });
}

/** Kubernetes' resource.Quantity pattern, as the built-in types publish it. */
export const QUANTITY_PATTERN = '^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$';

/** An integer or a string (IntOrString): e.g. a 64-bit input sent as a decimal string. */
export function intOrString(o: Doc & { pattern?: string } = {}): Schema<string | number> {
  return make({ anyOf: [{ type: 'integer' }, { type: 'string' }], 'x-kubernetes-int-or-string': true, ...defined(o) });
}

/** A resource quantity: "100m", "64Mi", or a plain number. */
export function quantity(o: Doc = {}): Schema<string | number> {
  return intOrString({ pattern: QUANTITY_PATTERN, ...o });
}

/**
 * Why a schema is not structural (apiextensions.k8s.io/v1 refuses such CRDs),
 * one line per problem; empty when it is. Checks what our builder could get
 * wrong: a type on every node, objects with properties xor additionalProperties,
 * items on arrays, anyOf/required naming only known properties, no types or
 * defaults inside anyOf, list-map keys that are required scalar properties.
 */
export function structuralProblems(s: OpenApi, path = ''): string[] {
  const out: string[] = [];
  const at = path || '<root>';
  const free = s['x-kubernetes-preserve-unknown-fields'] === true;
  const intOrString = s['x-kubernetes-int-or-string'] === true;
  if (!s.type && !free && !intOrString) out.push(`${at}: no type`);
  if (intOrString) {
    const ok = s.anyOf?.length === 2 && s.anyOf.every((a) => Object.keys(a).length === 1 && (a.type === 'integer' || a.type === 'string'));
    if (s.type || !ok) out.push(`${at}: x-kubernetes-int-or-string needs no type and anyOf [integer, string]`);
  } else {
    for (const a of s.anyOf ?? []) {
      for (const k of ['type', 'description', 'default', 'additionalProperties', 'x-kubernetes-preserve-unknown-fields'] as const) {
        if (a[k] !== undefined) out.push(`${at}: anyOf may not set ${k}`);
      }
      for (const r of a.required ?? []) if (!s.properties?.[r]) out.push(`${at}: anyOf requires unknown property ${r}`);
    }
  }
  // an object's metadata is the apiserver's own: `type: object` and nothing else
  if (s.type === 'object' && path !== '.metadata') {
    if (s.properties && s.additionalProperties) out.push(`${at}: both properties and additionalProperties`);
    if (!s.properties && !s.additionalProperties && !free) out.push(`${at}: object with neither properties nor additionalProperties (nor preserve-unknown-fields)`);
    for (const r of s.required ?? []) if (!s.properties?.[r]) out.push(`${at}: requires unknown property ${r}`);
  }
  if (s.type !== 'object' && (s.properties || s.additionalProperties)) out.push(`${at}: properties on a ${s.type}`);
  if (s.type === 'array' && !s.items) out.push(`${at}: array without items`);
  if (s.type !== 'array' && s.items) out.push(`${at}: items on a ${s.type}`);
  if (s.default !== undefined && path === '') out.push(`${at}: default at the root`);
  if (s['x-kubernetes-list-type'] === 'map') {
    const item = s.items;
    for (const k of s['x-kubernetes-list-map-keys'] ?? []) {
      const p = item?.properties?.[k];
      if (!p || !['string', 'integer', 'boolean'].includes(p.type ?? '')) out.push(`${at}: list-map key ${k} is not a scalar property`);
      else if (!item!.required?.includes(k) && p.default === undefined) out.push(`${at}: list-map key ${k} is neither required nor defaulted`);
    }
    if (!s['x-kubernetes-list-map-keys']?.length) out.push(`${at}: list-type map without list-map-keys`);
  }
  for (const [k, p] of Object.entries(s.properties ?? {})) out.push(...structuralProblems(p, `${path}.${k}`));
  if (s.additionalProperties) out.push(...structuralProblems(s.additionalProperties, `${path}.*`));
  if (s.items) out.push(...structuralProblems(s.items, `${path}[]`));
  return out;
}

/** The schema at a JSON path like `.spec.k8s.replicas` (for printer columns and scale paths), or undefined. */
export function schemaAt(s: OpenApi, jsonPath: string): OpenApi | undefined {
  let cur: OpenApi | undefined = s;
  for (const part of jsonPath.replace(/^\./, '').split('.')) {
    if (!cur) return undefined;
    cur = cur.properties?.[part] ?? cur.additionalProperties;
  }
  return cur;
}
