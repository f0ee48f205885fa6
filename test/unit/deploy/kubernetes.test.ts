import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Deployment } from 'kubernetes-models/apps/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Service, ServiceAccount } from 'kubernetes-models/v1';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { configFromObject } from '../../../src/config/load.js';
import { loadPolicies } from '../../../src/istio/load.js';
import { TempDir } from '../../helpers/pki.js';

/**
 * The sidecar manifests (examples/sidecar: SVID from a Secret, and from SPIRE's Workload API) as a
 * cluster would take them: every object validated
 * against the Kubernetes API schemas (kubernetes-models), then the restricted Pod Security
 * Standard's fields checked one by one, and the embedded config and policies loaded as the
 * proxy would load them.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [key: string]: unknown;
}

/** The model class for each apiVersion/kind: validate() checks the object against the API schema. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

type Container = {
  name: string;
  image: string;
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  securityContext?: {
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    privileged?: boolean;
    runAsNonRoot?: boolean;
    runAsUser?: number;
    capabilities?: { drop?: string[]; add?: string[] };
  };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  volumeMounts?: { name: string; mountPath: string; subPath?: string }[];
  startupProbe?: { exec?: { command: string[] } };
  readinessProbe?: { exec?: { command: string[] } };
  livenessProbe?: { exec?: { command: string[] } };
};
type PodSpec = {
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  securityContext?: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    runAsGroup?: number;
    seccompProfile?: { type: string };
  };
  containers: Container[];
  volumes?: Record<string, unknown>[];
};

for (const name of ['portcullis-sidecar.yaml', 'portcullis-sidecar-spire.yaml']) {
  const FILE = join(ROOT, 'examples/sidecar', name);
  const docs = parseAllDocuments(readFileSync(FILE, 'utf8')).map((d) => d.toJS() as K8sObject);
  const byKind = (kind: string): K8sObject[] => docs.filter((d) => d.kind === kind);
  const one = <T>(kind: string): T => {
    const found = byKind(kind);
    expect(found, kind).toHaveLength(1);
    return found[0] as unknown as T;
  };

  describe(`examples/sidecar/${name}`, () => {
    const deployment = one<{
      spec: { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
    }>('Deployment');
    const pod = deployment.spec.template.spec;
    const proxy = pod.containers.find((c) => c.name === 'portcullis') as Container;

    it.each(docs.map((d) => [`${d.kind} ${d.metadata.name}`, d] as const))(
      '%s is valid against the Kubernetes API schema',
      (_n, d) => {
        const Model = MODELS[`${d.apiVersion}/${d.kind}`];
        expect(Model, `no model for ${d.apiVersion}/${d.kind}`).toBeDefined();
        expect(() => new (Model as NonNullable<typeof Model>)(d as never).validate()).not.toThrow();
      },
    );

    it('the schema check can fail: a string user id is refused', () => {
      const bad = structuredClone(deployment) as unknown as { spec: { template: { spec: PodSpec } } };
      (bad.spec.template.spec.securityContext as Record<string, unknown>).runAsUser = 'node';
      expect(() => new Deployment(bad as never).validate()).toThrow(/runAsUser/);
    });

    it('follows the restricted Pod Security Standard at pod level', () => {
      const sc = pod.securityContext ?? {};
      expect(sc.runAsNonRoot).toBe(true);
      expect(sc.runAsUser).toBeGreaterThan(0);
      expect(Number.isInteger(sc.runAsUser)).toBe(true);
      expect(sc.runAsGroup).toBeGreaterThan(0);
      expect(sc.seccompProfile?.type).toBe('RuntimeDefault');
      expect(pod.hostNetwork ?? false).toBe(false);
      expect(pod.hostPID ?? false).toBe(false);
      expect(pod.hostIPC ?? false).toBe(false);
      expect(pod.automountServiceAccountToken).toBe(false);
      const allowed = new Set([
        'configMap',
        'secret',
        'emptyDir',
        'projected',
        'downwardAPI',
        'csi',
        'ephemeral',
        'persistentVolumeClaim',
      ]);
      for (const v of pod.volumes ?? []) {
        const types = Object.keys(v).filter((k) => k !== 'name');
        expect(
          types.every((t) => allowed.has(t)),
          JSON.stringify(v),
        ).toBe(true);
      }
    });

    it.each(pod.containers.map((c) => [c.name, c] as const))(
      'container %s: no privilege, read-only root, ALL dropped, requests and limits',
      (_n, c) => {
        const sc = c.securityContext ?? {};
        expect(sc.allowPrivilegeEscalation).toBe(false);
        expect(sc.readOnlyRootFilesystem).toBe(true);
        expect(sc.privileged ?? false).toBe(false);
        expect(sc.capabilities?.drop).toEqual(['ALL']);
        expect(sc.capabilities?.add ?? []).toEqual([]);
        expect(sc.runAsUser ?? 1).toBeGreaterThan(0);
        expect(c.resources?.requests?.cpu).toBeDefined();
        expect(c.resources?.requests?.memory).toBeDefined();
        expect(c.resources?.limits?.cpu).toBeDefined();
        expect(c.resources?.limits?.memory).toBeDefined();
      },
    );

    it('names a ServiceAccount that the file defines', () => {
      expect(byKind('ServiceAccount').map((s) => s.metadata.name)).toContain(pod.serviceAccountName);
    });

    it('mounts config and policies as whole folders (no subPath), so updates reach the proxy', () => {
      for (const m of proxy.volumeMounts ?? []) expect(m.subPath, m.mountPath).toBeUndefined();
    });

    it('embeds a config that loads, keeps admin on loopback and listens where the Service and NetworkPolicy point', () => {
      const cms = byKind('ConfigMap') as unknown as {
        metadata: { name: string };
        data: Record<string, string>;
      }[];
      const main = cms.find((c) => c.data['portcullis.yaml'] !== undefined) as (typeof cms)[number];
      const configPath = proxy.args?.[proxy.args.indexOf('-c') + 1] as string;
      const cfg = configFromObject(
        parseAllDocuments(main.data['portcullis.yaml'] as string)[0]?.toJS(),
        '/etc/portcullis/config',
      );
      expect(configPath).toBe('/etc/portcullis/config/portcullis.yaml');
      expect(cfg.admin?.address.host).toBe('127.0.0.1');
      const listener = cfg.listeners[0];
      expect(listener?.address.host).toBe('0.0.0.0');
      const port = listener?.address.port;
      const mtls = proxy.ports?.find((p) => p.name === 'mtls');
      expect(mtls?.containerPort).toBe(port);
      const svc = one<{ spec: { ports: { targetPort: string | number }[] } }>('Service');
      expect(svc.spec.ports[0]?.targetPort).toBe('mtls');
      const np = one<{
        spec: {
          ingress: { ports: { port: number }[] }[];
          podSelector: { matchLabels: Record<string, string> };
        };
      }>('NetworkPolicy');
      expect(np.spec.ingress.flatMap((i) => i.ports.map((p) => p.port))).toEqual([port]);
      expect(np.spec.podSelector.matchLabels).toEqual(deployment.spec.template.metadata.labels);
      // The probes reach the loopback admin server from inside the container.
      for (const probe of [proxy.startupProbe, proxy.readinessProbe, proxy.livenessProbe]) {
        const cmd = probe?.exec?.command ?? [];
        expect(cmd.slice(0, 3)).toEqual(['node', '/app/dist/cli/launch.cjs', 'probe']);
        expect(cmd[4]).toMatch(
          new RegExp(`^http://127\\.0\\.0\\.1:${cfg.admin?.address.port}/(readyz|healthz)$`),
        );
      }
      // The image is the one the README builds.
      expect(readFileSync(join(ROOT, 'README.md'), 'utf8')).toContain(`docker build -t ${proxy.image} .`);
    });

    it('takes its identity from a mounted Secret, or from the Workload API socket of a mounted SPIFFE CSI volume', () => {
      const cms = byKind('ConfigMap') as unknown as { data: Record<string, string> }[];
      const main = cms.find((c) => c.data['portcullis.yaml'] !== undefined) as (typeof cms)[number];
      const cfg = configFromObject(
        parseAllDocuments(main.data['portcullis.yaml'] as string)[0]?.toJS(),
        '/etc/portcullis/config',
      );
      const mountOf = (path: string): { name: string; mountPath: string } | undefined =>
        (proxy.volumeMounts ?? []).find((m) => path.startsWith(`${m.mountPath}/`));
      const volume = (mountName: string | undefined): Record<string, unknown> | undefined =>
        (pod.volumes ?? []).find((v) => v.name === mountName);
      const wapi = cfg.identity.workloadApi;
      if (wapi === null) {
        expect(volume(mountOf(cfg.identity.cert)?.name)?.secret).toBeDefined();
      } else {
        const socketPath = wapi.socket.slice('unix://'.length);
        expect(volume(mountOf(socketPath)?.name)?.csi).toEqual({ driver: 'csi.spiffe.io', readOnly: true });
        // The app's calls out go through the outbound listener, which stays on loopback.
        expect(cfg.outbound?.address.host).toBe('127.0.0.1');
        const app = pod.containers.find((c) => c.name === 'app') as Container & {
          env?: { name: string; value: string }[];
        };
        expect(app.env?.find((e) => e.name === 'HTTP_PROXY')?.value).toBe(
          `http://127.0.0.1:${cfg.outbound?.address.port}`,
        );
      }
    });

    it('embeds policies that load and apply to the workload', () => {
      const cms = byKind('ConfigMap') as unknown as { data: Record<string, string> }[];
      const policies = cms.find((c) => c.data['mtls.yaml'] !== undefined) as (typeof cms)[number];
      const dir = new TempDir();
      try {
        for (const [name, text] of Object.entries(policies.data)) dir.write(name, text);
        const set = loadPolicies([dir.path], 'default');
        expect(set.peerAuthentications).toHaveLength(1);
        expect(set.authorizationPolicies).toHaveLength(1);
      } finally {
        dir.cleanup();
      }
    });
  });
}
