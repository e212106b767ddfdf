// CustomResourceDefinitions (apiextensions.k8s.io/v1) built from the kinds of
// types.ts: structural schema, status subresource (and scale where the kind
// has one), printer columns, short names, the `propeller` category. A kind
// whose schema is not structural, or whose columns name a field the schema
// lacks, throws here, before any apiserver sees it.

import { schemaAt, structuralProblems, type OpenApi } from './schema.ts';
import { CATEGORY, KINDS, objectSchema, type KindDef, type PrinterColumn } from './types.ts';

/** On every object we generate. */
export const PART_OF = { 'app.kubernetes.io/part-of': 'propeller' } as const;

export interface CustomResourceDefinition {
  apiVersion: 'apiextensions.k8s.io/v1';
  kind: 'CustomResourceDefinition';
  metadata: { name: string; labels: Record<string, string> };
  spec: {
    group: string;
    names: { kind: string; listKind: string; plural: string; singular: string; shortNames: string[]; categories: string[] };
    scope: 'Namespaced';
    versions: {
      name: string;
      served: true;
      storage: true;
      schema: { openAPIV3Schema: OpenApi };
      subresources: {
        status: Record<string, never>;
        scale?: { specReplicasPath: string; statusReplicasPath: string; labelSelectorPath: string };
      };
      additionalPrinterColumns: PrinterColumn[];
    }[];
  };
}

export function crdName(k: KindDef): string {
  return `${k.plural}.${k.group}`;
}

function check(k: KindDef, schema: OpenApi): void {
  const problems = structuralProblems(schema);
  // metadata is the apiserver's own
  for (const c of k.columns) if (!c.jsonPath.startsWith('.metadata.') && !schemaAt(schema, c.jsonPath)) problems.push(`column ${c.name}: no field ${c.jsonPath}`);
  if (k.scale) {
    if (schemaAt(schema, k.scale.specReplicasPath)?.type !== 'integer') problems.push(`scale: ${k.scale.specReplicasPath} is not an integer field`);
    if (schemaAt(schema, k.scale.statusReplicasPath)?.type !== 'integer') problems.push(`scale: ${k.scale.statusReplicasPath} is not an integer field`);
    if (schemaAt(schema, k.scale.labelSelectorPath)?.type !== 'string') problems.push(`scale: ${k.scale.labelSelectorPath} is not a string field`);
  }
  if (problems.length) throw new Error(`${k.kind}: ${problems.join('; ')}`);
}

export function crd(k: KindDef): CustomResourceDefinition {
  const schema = objectSchema(k);
  check(k, schema);
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: crdName(k), labels: { ...PART_OF } },
    spec: {
      group: k.group,
      names: { kind: k.kind, listKind: `${k.kind}List`, plural: k.plural, singular: k.singular, shortNames: k.shortNames, categories: [CATEGORY] },
      scope: 'Namespaced',
      versions: [
        {
          name: k.version,
          served: true,
          storage: true,
          schema: { openAPIV3Schema: schema },
          subresources: { status: {}, ...(k.scale ? { scale: k.scale } : {}) },
          additionalPrinterColumns: k.columns,
        },
      ],
    },
  };
}

export function crds(): CustomResourceDefinition[] {
  return KINDS.map((k) => crd(k as KindDef));
}
