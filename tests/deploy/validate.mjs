// validate.mjs - offline, schema-aware validation of deploy/kubernetes/.
// Run through tests/deploy/validate.sh (which installs the pinned packages).
//
//   node validate.mjs --root REPO [--atlasgate PATH/TO/atlasgate] [--tmp DIR]
//
// For every YAML document under deploy/kubernetes (examples/ included):
//  1. YAML parse as Kubernetes does (YAML 1.1, duplicate keys refused);
//  2. the Kubernetes OpenAPI schema of its apiVersion/kind (kubernetes-models,
//     ajv-compiled: types, enums, required fields, formats);
//  3. no unknown fields anywhere (the OpenAPI schemas allow extra properties;
//     the API server would drop them silently, e.g. a misspelt
//     mountPropagation): each key is looked up in the API types of
//     kubernetes-types with the TypeScript type checker;
// then the project's own cross-checks (RBAC is read-only on pods, the
// DaemonSet's privileges, mounts, probes and names line up with the other
// manifests and with the config), the kustomization, the Dockerfile, and the
// ConfigMap's atlasgate.yaml through `atlasgate check --config`.
// Prints one line per check and "N passed, M failed"; exit 1 on any failure.

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

import ts from "typescript";
import YAML from "yaml";

const require = createRequire(import.meta.url);

// --- arguments -------------------------------------------------------------------
const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const root = path.resolve(opt("--root") ?? path.join(path.dirname(new URL(import.meta.url).pathname), "../.."));
const atlasgate = opt("--atlasgate");
const k8sDir = path.join(root, "deploy/kubernetes");

let passed = 0;
let failed = 0;
const check = (name, fn) => {
  let problems;
  try {
    problems = fn() ?? [];
  } catch (e) {
    problems = [`exception: ${e.stack ?? e}`];
  }
  if (problems.length === 0) {
    passed++;
    console.log(`ok   ${name}`);
  } else {
    failed++;
    console.log(`FAIL ${name}`);
    for (const p of problems) console.log(`     ${p}`);
  }
};

// --- load every document ---------------------------------------------------------------
const yamlFiles = (dir) =>
  fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) =>
      e.isDirectory() ? yamlFiles(path.join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? [path.join(dir, e.name)] : [],
    )
    .sort();

const docs = []; // {file, index, obj}
const files = yamlFiles(k8sDir);
check(`YAML syntax (${files.length} files, YAML 1.1 as kubectl reads it)`, () => {
  const problems = [];
  for (const f of files) {
    const parsed = YAML.parseAllDocuments(fs.readFileSync(f, "utf8"), { version: "1.1", uniqueKeys: true, prettyErrors: true });
    parsed.forEach((d, index) => {
      for (const e of d.errors) problems.push(`${path.relative(root, f)}: ${e.message}`);
      for (const w of d.warnings) problems.push(`${path.relative(root, f)}: ${w.message}`);
      const obj = d.toJS();
      if (obj !== null && obj !== undefined) docs.push({ file: path.relative(root, f), index, obj });
    });
  }
  return problems;
});

const isKustomization = (o) => o.kind === "Kustomization";
const where = (d) => `${d.file}${d.index ? `#${d.index}` : ""} (${d.obj.kind} ${d.obj.metadata?.name ?? ""})`;
const apiDocs = docs.filter((d) => !isKustomization(d.obj));

// --- 2. OpenAPI schemas -----------------------------------------------------------------
const modelPath = (apiVersion, kind) => {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : [null, apiVersion];
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
};

for (const d of apiDocs) {
  check(`schema ${where(d)}`, () => {
    const { apiVersion, kind } = d.obj;
    if (typeof apiVersion !== "string" || typeof kind !== "string") return ["apiVersion and kind are required"];
    let mod;
    try {
      mod = require(modelPath(apiVersion, kind));
    } catch {
      return [`unknown apiVersion/kind ${apiVersion} ${kind} (not in the Kubernetes API)`];
    }
    const Model = mod[kind];
    try {
      new Model(d.obj).validate();
    } catch (e) {
      return (e.errors ?? [{ instancePath: "", message: e.message }]).map(
        (x) => `${x.instancePath || "/"}: ${x.message}${x.params?.allowedValues ? ` (${x.params.allowedValues.join(", ")})` : ""}`,
      );
    }
    return [];
  });
}

// --- 3. unknown fields, with the TypeScript checker over kubernetes-types -------------------
// kubernetes-types names a group by its first label (rbac.authorization.k8s.io -> rbac).
const typeImport = (apiVersion, kind) => {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["core", apiVersion];
  const dir = group === "internal.apiserver.k8s.io" ? "apiserverinternal" : group.split(".")[0];
  return { module: `kubernetes-types/${dir}/${version}`, kind };
};
{
  const typesDir = path.dirname(require.resolve("kubernetes-types/package.json"));
  const wanted = apiDocs.filter((d) => typeof d.obj.apiVersion === "string" && typeof d.obj.kind === "string");
  const lines = wanted.map((d, i) => {
    const t = typeImport(d.obj.apiVersion, d.obj.kind);
    return `import type { ${t.kind} as T${i} } from "${t.module}";\nexport declare const doc${i}: T${i};`;
  });
  const file = path.join(typesDir, "__atlasgate_validate__.ts");  // virtual; resolves next to the package
  const host = ts.createCompilerHost({});
  const original = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) =>
    name === file ? ts.createSourceFile(name, lines.join("\n"), lang, true) : original(name, lang, ...rest);
  const origExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === file || origExists(name);
  const program = ts.createProgram(
    [file],
    { strict: true, noEmit: true, types: [], skipLibCheck: true, moduleResolution: ts.ModuleResolutionKind.Node10, target: ts.ScriptTarget.ES2020 },
    host,
  );
  const checker = program.getTypeChecker();
  const sf = program.getSourceFile(file);
  // Each document owns two lines of the generated source (import, declaration).
  const diags = new Map();
  for (const x of ts.getPreEmitDiagnostics(program, sf)) {
    const line = x.file && x.start !== undefined ? x.file.getLineAndCharacterOfPosition(x.start).line : -1;
    const key = line >= 0 ? Math.floor(line / 2) : -1;
    diags.set(key, [...(diags.get(key) ?? []), ts.flattenDiagnosticMessageText(x.messageText, " ")]);
  }
  const declared = new Map();
  ts.forEachChild(sf, (node) => {
    if (ts.isVariableStatement(node))
      for (const decl of node.declarationList.declarations) declared.set(decl.name.getText(sf), checker.getTypeAtLocation(decl));
  });

  const walk = (value, type, at, problems) => {
    type = checker.getNonNullableType(type);
    if (Array.isArray(value)) {
      if (!checker.isArrayType(type)) return; // the schema check reports type mismatches
      const elem = checker.getTypeArguments(type)[0];
      value.forEach((v, i) => walk(v, elem, `${at}[${i}]`, problems));
      return;
    }
    if (value === null || typeof value !== "object") return;
    if (type.isUnion()) {
      const objects = type.types.filter((t) => t.getProperties().length > 0 || checker.getIndexInfosOfType(t).length > 0);
      if (objects.length !== 1) return;
      type = objects[0];
    }
    const props = type.getProperties();
    const index = checker.getIndexInfosOfType(type).find((i) => i.keyType.flags & ts.TypeFlags.String);
    for (const [k, v] of Object.entries(value)) {
      const prop = type.getProperty(k);
      if (prop) {
        const decl = prop.valueDeclaration ?? prop.declarations?.[0];
        walk(v, checker.getTypeOfSymbolAtLocation(prop, decl ?? sf), `${at}.${k}`, problems);
      } else if (index) {
        walk(v, index.type, `${at}.${k}`, problems);
      } else if (props.length > 0) {
        const names = props.map((p) => p.getName());
        const near = names.filter((n) => n.toLowerCase() === k.toLowerCase() || levenshtein(n, k) <= 2);
        problems.push(`${at}.${k}: unknown field${near.length ? ` (did you mean ${near.join(" or ")}?)` : ""}`);
      }
    }
  };

  wanted.forEach((d, i) => {
    check(`no unknown fields ${where(d)}`, () => {
      const problems = [...(diags.get(i) ?? []), ...(diags.get(-1) ?? [])].map((m) => `API types: ${m}`);
      const type = declared.get(`doc${i}`);
      if (!type || type.flags & ts.TypeFlags.Any) return [...problems, `no API type for ${d.obj.apiVersion} ${d.obj.kind}`];
      walk(d.obj, type, "", problems);
      return problems;
    });
  });
}

function levenshtein(a, b) {
  const m = a.length, n = b.length;
  const dp = Array.from({ length: m + 1 }, (_, i) => [i, ...Array(n).fill(0)]);
  for (let j = 1; j <= n; j++) dp[0][j] = j;
  for (let i = 1; i <= m; i++)
    for (let j = 1; j <= n; j++)
      dp[i][j] = Math.min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return dp[m][n];
}

// --- project cross-checks -----------------------------------------------------------------
const find = (kind, pred = () => true) => apiDocs.filter((d) => d.obj.kind === kind && pred(d)).map((d) => d.obj);
const one = (kind, problems) => {
  const all = find(kind, (d) => !d.file.includes("/examples/"));
  if (all.length !== 1) problems.push(`expected exactly one ${kind}, found ${all.length}`);
  return all[0];
};

check("every manifest names the atlasgate-system namespace (namespaced kinds)", () => {
  const problems = [];
  for (const d of apiDocs) {
    if (d.file.includes("/examples/")) continue;
    const namespaced = !["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(d.obj.kind);
    if (namespaced && d.obj.metadata?.namespace !== "atlasgate-system") problems.push(`${where(d)}: metadata.namespace is not atlasgate-system`);
  }
  const ns = find("Namespace")[0];
  if (ns?.metadata?.name !== "atlasgate-system") problems.push("no Namespace atlasgate-system");
  if (ns?.metadata?.labels?.["pod-security.kubernetes.io/enforce"] !== "privileged")
    problems.push("the namespace must allow privileged pods (pod-security.kubernetes.io/enforce: privileged)");
  return problems;
});

check("RBAC: pods get/list/watch only, bound to the DaemonSet's service account", () => {
  const problems = [];
  const role = one("ClusterRole", problems);
  const binding = one("ClusterRoleBinding", problems);
  const sa = one("ServiceAccount", problems);
  const ds = one("DaemonSet", problems);
  if (!role || !binding || !sa || !ds) return problems;
  const rules = role.rules ?? [];
  if (rules.length !== 1) problems.push(`ClusterRole: ${rules.length} rules, want exactly 1`);
  for (const r of rules) {
    if (JSON.stringify(r.apiGroups) !== JSON.stringify([""])) problems.push(`apiGroups ${JSON.stringify(r.apiGroups)}, want [""]`);
    if (JSON.stringify(r.resources) !== JSON.stringify(["pods"])) problems.push(`resources ${JSON.stringify(r.resources)}, want ["pods"]`);
    if (JSON.stringify([...(r.verbs ?? [])].sort()) !== JSON.stringify(["get", "list", "watch"]))
      problems.push(`verbs ${JSON.stringify(r.verbs)}, want get, list, watch`);
    if (r.resourceNames || r.nonResourceURLs) problems.push("no resourceNames / nonResourceURLs expected");
  }
  if (binding.roleRef?.kind !== "ClusterRole" || binding.roleRef?.name !== role.metadata.name)
    problems.push(`ClusterRoleBinding.roleRef does not name ClusterRole ${role.metadata.name}`);
  const subj = binding.subjects ?? [];
  if (!subj.some((s) => s.kind === "ServiceAccount" && s.name === sa.metadata.name && s.namespace === sa.metadata.namespace))
    problems.push(`ClusterRoleBinding does not bind ServiceAccount ${sa.metadata.namespace}/${sa.metadata.name}`);
  if (ds.spec.template.spec.serviceAccountName !== sa.metadata.name)
    problems.push(`DaemonSet serviceAccountName ${ds.spec.template.spec.serviceAccountName} != ${sa.metadata.name}`);
  return problems;
});

// The ConfigMap's atlasgate.yaml, parsed (as YAML 1.2, like yaml-cpp).
const cm = find("ConfigMap", (d) => !d.file.includes("/examples/"))[0];
const cfgText = cm?.data?.["atlasgate.yaml"];
const cfg = cfgText ? YAML.parse(cfgText) : undefined;

check("DaemonSet: privileges, mounts, downward API, probes, resources, tolerations", () => {
  const problems = [];
  const ds = one("DaemonSet", problems);
  if (!ds) return problems;
  const pod = ds.spec.template.spec;
  const main = (pod.containers ?? []).find((c) => c.name === "atlasgate");
  if (!main) return ["no container named atlasgate"];
  if (pod.hostPID !== true) problems.push("hostPID must be true");
  if (pod.hostNetwork !== true) problems.push("hostNetwork must be true (upstream leaves from the node; probes on its loopback)");
  if (pod.hostNetwork && pod.dnsPolicy !== "ClusterFirstWithHostNet") problems.push("dnsPolicy should be ClusterFirstWithHostNet with hostNetwork");
  if (main.securityContext?.privileged !== true) problems.push("the atlasgate container must be privileged");
  if (!(pod.tolerations ?? []).length) problems.push("no tolerations: document which taints the daemon tolerates");
  const sel = ds.spec.selector?.matchLabels ?? {};
  for (const [k, v] of Object.entries(sel))
    if (ds.spec.template.metadata?.labels?.[k] !== v) problems.push(`selector ${k}=${v} does not match the template labels`);

  const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
  const used = new Set();
  for (const c of [...(pod.containers ?? []), ...(pod.initContainers ?? [])]) {
    for (const m of c.volumeMounts ?? []) {
      used.add(m.name);
      if (!volumes.has(m.name)) problems.push(`container ${c.name}: volumeMount ${m.name} has no volume`);
    }
    if (!c.resources?.requests?.cpu || !c.resources?.requests?.memory || !c.resources?.limits?.memory)
      problems.push(`container ${c.name}: needs cpu/memory requests and a memory limit`);
    if (!c.image) problems.push(`container ${c.name}: no image`);
  }
  for (const name of volumes.keys()) if (!used.has(name)) problems.push(`volume ${name} is never mounted`);

  const mountOf = (hostPath) => {
    const vol = [...volumes.values()].find((v) => v.hostPath?.path === hostPath);
    return vol && (main.volumeMounts ?? []).find((m) => m.name === vol.name);
  };
  for (const [hp, want] of [
    ["/sys/fs/cgroup", {}],
    ["/sys/fs/bpf", { mountPropagation: "Bidirectional" }],
    ["/proc", {}],
    ["/run/netns", {}],
  ]) {
    const m = mountOf(hp);
    if (!m) problems.push(`the atlasgate container does not mount the host's ${hp}`);
    else for (const [k, v] of Object.entries(want)) if (m[k] !== v) problems.push(`mount of ${hp}: ${k} must be ${v}`);
  }

  const env = new Map((main.env ?? []).map((e) => [e.name, e]));
  if (env.get("NODE_NAME")?.valueFrom?.fieldRef?.fieldPath !== "spec.nodeName")
    problems.push("NODE_NAME must come from the downward API (fieldRef spec.nodeName)");

  // Probes on listen.admin: liveness (and startup) on /livez, which stays 200
  // while the event loop runs (a restart mends nothing /healthz reports);
  // readiness on /healthz, 503 when degraded.
  const wantPath = { livenessProbe: "/livez", readinessProbe: "/healthz", startupProbe: "/livez" };
  const admin = cfg?.listen?.admin;
  const [adminHost, adminPort] = typeof admin === "string" ? [admin.slice(0, admin.lastIndexOf(":")), Number(admin.slice(admin.lastIndexOf(":") + 1))] : [];
  if (!admin) problems.push("the config has no listen.admin: the probes have nothing to call");
  const portNumber = (p) => (typeof p === "number" ? p : (main.ports ?? []).find((x) => x.name === p)?.containerPort);
  for (const kind of ["livenessProbe", "readinessProbe", "startupProbe"]) {
    const probe = main[kind];
    if (!probe?.httpGet) {
      if (kind !== "startupProbe") problems.push(`${kind}: missing (httpGet ${wantPath[kind]})`);
      continue;
    }
    if (probe.httpGet.path !== wantPath[kind]) problems.push(`${kind}: path ${probe.httpGet.path}, want ${wantPath[kind]}`);
    if (admin && portNumber(probe.httpGet.port) !== adminPort) problems.push(`${kind}: port ${probe.httpGet.port} is not listen.admin's ${adminPort}`);
    if (admin && adminHost === "127.0.0.1" && probe.httpGet.host !== "127.0.0.1")
      problems.push(`${kind}: listen.admin is on 127.0.0.1, so the probe needs host: 127.0.0.1 (hostNetwork)`);
  }

  // Config, secret and state mounts agree with the config file.
  const cfgVol = [...volumes.values()].find((v) => v.configMap?.name === cm?.metadata?.name);
  const cfgMount = cfgVol && (main.volumeMounts ?? []).find((m) => m.name === cfgVol.name);
  const argv = [...(main.command ?? []), ...(main.args ?? [])];
  const cfgArg = argv[argv.indexOf("--config") + 1];
  if (!cfgMount) problems.push(`the ConfigMap ${cm?.metadata?.name} is not mounted`);
  else if (cfgArg !== path.posix.join(cfgMount.mountPath, "atlasgate.yaml")) problems.push(`--config ${cfgArg} is not ${cfgMount.mountPath}/atlasgate.yaml`);
  if (argv[0] !== "daemon") problems.push(`args must start with "daemon", got ${JSON.stringify(argv)}`);

  const secretExample = find("Secret")[0];
  const secretVol = [...volumes.values()].find((v) => v.secret);
  const secretMount = secretVol && (main.volumeMounts ?? []).find((m) => m.name === secretVol.name);
  for (const t of cfg?.targets ?? []) {
    for (const kind of ["service_account", "api_key"]) {
      const c = t.credentials?.[kind];
      const file = c?.client_secret_file ?? c?.private_key_file;
      if (!file) continue;
      if (!secretMount || !file.startsWith(secretMount.mountPath + "/")) {
        problems.push(`${kind} secret file ${file} is not under a mounted Secret`);
        continue;
      }
      const key = file.slice(secretMount.mountPath.length + 1);
      if (secretVol.secret.secretName !== secretExample?.metadata?.name) problems.push(`the Secret volume names ${secretVol.secret.secretName}, the example ${secretExample?.metadata?.name}`);
      if (!(key in (secretExample?.stringData ?? {})) && !(key in (secretExample?.data ?? {}))) problems.push(`secret.example.yaml has no key ${key}`);
    }
  }
  const state = cfg?.state_dir;
  if (!state || !(main.volumeMounts ?? []).some((m) => m.mountPath === state && volumes.get(m.name)?.hostPath))
    problems.push(`state_dir ${state} must be a hostPath mount (the CA survives restarts)`);
  return problems;
});

check("CA publication: agent pods get the certificate, never the key", () => {
  const problems = [];
  const ds = one("DaemonSet", problems);
  if (!ds) return problems;
  const pod = ds.spec.template.spec;
  const volumes = pod.volumes ?? [];
  const state = cfg?.state_dir;
  const stateVol = volumes.find((v) => v.hostPath?.path === state);
  const trustVol = volumes.find((v) => v.hostPath?.path === "/var/lib/atlasgate/trust");
  if (!stateVol) problems.push(`no hostPath volume for state_dir ${state}`);
  if (!trustVol) problems.push("no hostPath volume /var/lib/atlasgate/trust (the published CA)");
  if (stateVol && trustVol && (trustVol.hostPath.path + "/").startsWith(stateVol.hostPath.path + "/"))
    problems.push("the published directory must not be inside state_dir (ca.key lives there)");
  for (const d of apiDocs.filter((x) => x.file.includes("/examples/") && x.obj.kind === "Pod")) {
    const p = d.obj.spec;
    const vol = (p.volumes ?? []).find((v) => v.hostPath);
    if (!vol) problems.push(`${where(d)}: no hostPath trust volume`);
    else if (vol.hostPath.path !== trustVol?.hostPath.path) problems.push(`${where(d)}: mounts ${vol.hostPath.path}, the daemon publishes ${trustVol?.hostPath.path}`);
    else if (state && (state + "/").startsWith(vol.hostPath.path + "/")) problems.push(`${where(d)}: mounts a parent of state_dir`);
    for (const c of p.containers ?? []) {
      const m = (c.volumeMounts ?? []).find((x) => x.name === vol?.name);
      if (!m?.readOnly) problems.push(`${where(d)}: container ${c.name} must mount the trust volume readOnly`);
      const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));
      if (!env.SSL_CERT_FILE?.startsWith(m?.mountPath + "/")) problems.push(`${where(d)}: container ${c.name}: SSL_CERT_FILE not under the trust mount`);
      if (!env.NODE_EXTRA_CA_CERTS?.startsWith(m?.mountPath + "/")) problems.push(`${where(d)}: container ${c.name}: NODE_EXTRA_CA_CERTS not under the trust mount`);
    }
    if (d.obj.metadata?.labels?.["atlasgate.io/inject"] !== "true") problems.push(`${where(d)}: not labelled atlasgate.io/inject=true`);
  }
  return problems;
});

check("kustomization.yaml: lists every manifest (not the examples/Secret), images match", () => {
  const problems = [];
  const k = docs.find((d) => isKustomization(d.obj))?.obj;
  if (!k) return ["no kustomization.yaml"];
  const allowed = new Set(["apiVersion", "kind", "resources", "images", "namespace", "labels", "commonLabels", "commonAnnotations", "patches", "configMapGenerator", "secretGenerator", "generatorOptions"]);
  for (const key of Object.keys(k)) if (!allowed.has(key)) problems.push(`unexpected key ${key}`);
  if (k.apiVersion !== "kustomize.config.k8s.io/v1beta1") problems.push(`apiVersion ${k.apiVersion}`);
  const listed = new Set(k.resources ?? []);
  for (const r of listed) if (!fs.existsSync(path.join(k8sDir, r))) problems.push(`resource ${r} does not exist`);
  for (const f of fs.readdirSync(k8sDir).filter((f) => /\.ya?ml$/.test(f))) {
    if (f === "kustomization.yaml") continue;
    if (f.includes("example")) {
      if (listed.has(f)) problems.push(`${f} is an example and must not be installed`);
    } else if (!listed.has(f)) problems.push(`${f} is not listed in resources`);
  }
  const ds = find("DaemonSet")[0];
  const names = new Set((k.images ?? []).map((i) => i.name));
  for (const c of ds?.spec?.template?.spec?.containers ?? []) {
    const image = c.image.replace(/[:@].*$/, "");
    if (!names.has(image)) problems.push(`container ${c.name}: image ${image} has no images: entry`);
  }
  return problems;
});

check("Dockerfile: multi-stage Debian 12, apt hygiene, no apt or shell in the image's stages, exec-form entrypoint", () => {
  const problems = [];
  const file = path.join(root, "Dockerfile");
  if (!fs.existsSync(file)) return ["no Dockerfile"];
  const raw = fs.readFileSync(file, "utf8");
  const text = raw.replace(/\\\n/g, " ");
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  // Stages: {from, name, lines}.
  const stages = [];
  for (const l of lines) {
    const from = l.match(/^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$/i);
    if (from) stages.push({ from: from[1], name: from[2], lines: [] });
    else if (stages.length) stages.at(-1).lines.push(l);
    else if (!/^ARG\s/i.test(l)) problems.push(`before the first FROM: ${l.slice(0, 80)}`);
  }
  if (stages.length < 2) problems.push("not multi-stage");
  const byName = new Map(stages.filter((s) => s.name).map((s) => [s.name, s]));
  for (const s of stages) {
    if (/\$/.test(s.from)) problems.push(`FROM ${s.from}: a variable base (buildah 1.28 resolves no stage through an ARG default)`);
    else if (!byName.has(s.from) && !/^debian:12(-slim)?(@sha256:[0-9a-f]{64})?$/.test(s.from))
      problems.push(`FROM ${s.from}: base must be debian:12 or debian:12-slim`);
  }
  // The stages an image is made of: a final stage and the stages it is FROM.
  const chain = (s) => {
    const out = [];
    for (let x = s; x && !out.includes(x); x = byName.get(x.from)) out.push(x);
    return out;
  };
  const runtime = stages.at(-1);
  const prebuilt = byName.get("prebuilt");
  const finals = [runtime, prebuilt].filter(Boolean);
  for (const f of finals) {
    const c = chain(f);
    const base = c.at(-1).from;
    if (!/^debian:12-slim/.test(base)) problems.push(`the runtime stage must be debian:12-slim (${f.name ?? "the last stage"} is ${base})`);
    // No package manager, no shell: what the image needs comes from earlier stages.
    for (const st of c)
      for (const l of st.lines.filter((l) => /^RUN\s/i.test(l))) {
        if (!/^RUN\s+\[/i.test(l)) problems.push(`stage ${st.name ?? "(last)"}: RUN in shell form (a shell runs it): ${l.slice(0, 80)}`);
        if (/\b(apt-get|apt|dpkg|aptitude)\b/.test(l)) problems.push(`runtime stage must not run apt or dpkg (${st.name ?? "last stage"}): ${l.slice(0, 80)}`);
      }
    const all = c.flatMap((st) => st.lines);
    const entry = all.filter((l) => /^ENTRYPOINT\s/i.test(l)).at(0);
    if (!entry || !/^ENTRYPOINT\s+\["\/usr\/local\/bin\/atlasgate"\]$/.test(entry))
      problems.push(`${f.name ?? "the last stage"}: ENTRYPOINT must be ["/usr/local/bin/atlasgate"] (exec form: no shell)`);
    if (all.some((l) => /^(USER|SHELL)\s/i.test(l))) problems.push(`${f.name ?? "the last stage"}: no USER/SHELL expected (root, no shell)`);
    if (all.some((l) => /^(ENV|ARG)\s/i.test(l) && /(SECRET|TOKEN|PASSWORD|KEY)/i.test(l))) problems.push("a secret-looking ENV/ARG in the image's stages");
    if (!all.some((l) => /^RUN\s+\["\/usr\/local\/bin\/atlasgate",\s*"version"\]/.test(l)))
      problems.push(`${f.name ?? "the last stage"}: does not run the binary once (a missing library would fail on a node, not here)`);
  }
  if (!prebuilt) problems.push("no stage prebuilt (scripts/image --binary builds --target prebuilt)");
  else if (!prebuilt.lines.some((l) => /^COPY\s+(--chmod=\S+\s+)?atlasgate\s/i.test(l))) problems.push("stage prebuilt does not COPY atlasgate from the context");
  if (!runtime.lines.some((l) => /^COPY\s+--from=build\s+\/build\/atlasgate\s/i.test(l))) problems.push("the last stage (the default) does not COPY the build stage's binary");
  if (runtime === prebuilt) problems.push("the default (last) stage must build from source, not be prebuilt");

  // apt hygiene in every stage that installs.
  for (const l of lines.filter((l) => /^RUN\s/i.test(l) && /apt-get install/.test(l))) {
    if (!/--no-install-recommends/.test(l)) problems.push(`apt-get install without --no-install-recommends: ${l.slice(0, 80)}`);
    if (!/apt-get update/.test(l)) problems.push(`apt-get install without apt-get update in the same RUN: ${l.slice(0, 80)}`);
    if (!/rm -rf \/var\/lib\/apt\/lists/.test(l)) problems.push(`apt lists not removed in the same RUN: ${l.slice(0, 80)}`);
    if (!/(^|\s)-y(\s|$)|--yes|-qq?y/.test(l)) problems.push(`apt-get install without -y: ${l.slice(0, 80)}`);
  }
  // A slim stage cleans apt's caches itself: a base without the docker-clean
  // hook (an mmdebstrap one, scripts/image) would otherwise keep .debs and pkgcache.
  for (const s of stages.filter((s) => /^debian:12-slim/.test(s.from)))
    for (const l of s.lines.filter((l) => /^RUN\s/i.test(l) && /apt-get install/.test(l)))
      if (!/apt-get clean/.test(l) || !/\/var\/cache\/apt/.test(l))
        problems.push(`stage ${s.name ?? s.from}: apt caches not removed in the installing RUN: ${l.slice(0, 80)}`);

  // Runtime libraries the binary links against: installed in a debian:12-slim
  // stage outside the image's chain, copied into it.
  const inImage = new Set(finals.flatMap(chain));
  const collect = stages.find((s) => !inImage.has(s) && /^debian:12-slim/.test(s.from) && s.lines.some((l) => /apt-get install/.test(l)));
  if (!collect) problems.push("no debian:12-slim stage installs the runtime libraries");
  else {
    const body = collect.lines.join("\n");
    for (const lib of ["libbpf1", "libelf1", "libssl3", "libyaml-cpp0.7", "libfmt9", "libsqlite3-0", "libboost-json1.81.0", "libboost-url1.81.0", "ca-certificates"])
      if (!body.includes(lib)) problems.push(`stage ${collect.name}: does not install ${lib}`);
    if (![...inImage].some((st) => st.lines.some((l) => new RegExp(`^COPY\\s+--from=${collect.name}\\s`, "i").test(l))))
      problems.push(`the image's stages do not COPY --from=${collect.name}`);
  }
  if (!/scripts\/image --binary/.test(raw)) problems.push("the header does not document scripts/image --binary");
  if (/\bADD\s+https?:/i.test(text)) problems.push("ADD of a URL");
  for (const l of lines.filter((l) => /^(RUN|COPY)\s/i.test(l) && /sudo /.test(l))) problems.push(`sudo in ${l}`);
  const ignore = path.join(root, ".dockerignore");
  if (!fs.existsSync(ignore)) problems.push("no .dockerignore (build dirs would be sent as context)");
  else if (!/^\*\*$/m.test(fs.readFileSync(ignore, "utf8"))) problems.push(".dockerignore must exclude everything (**) but the sources");
  return problems;
});

check("ConfigMap atlasgate.yaml: `atlasgate check --config`", () => {
  if (!cfgText) return ["the ConfigMap has no data.atlasgate.yaml"];
  if (!atlasgate) return ["no --atlasgate binary given"];
  const dir = fs.mkdtempSync(path.join(opt("--tmp") ?? os.tmpdir(), "ag-deploy-"));
  try {
    const f = path.join(dir, "atlasgate.yaml");
    fs.writeFileSync(f, cfgText, { mode: 0o644 });
    const r = spawnSync(atlasgate, ["check", "--config", f], { encoding: "utf8" });
    if (r.status !== 0) {
      // Point at the line in configmap.yaml, not at the scratch copy.
      const cmFile = docs.find((d) => d.obj === cm)?.file;
      const lines = fs.readFileSync(path.join(root, cmFile), "utf8").split("\n");
      const start = lines.findIndex((l) => /^\s+atlasgate\.yaml:\s*\|/.test(l)) + 1;  // 0-based line before the text
      const indent = (lines[start]?.match(/^\s*/) ?? [""])[0].length;
      const msg = (r.stderr || r.stdout).trim().replaceAll(
        new RegExp(`${f.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}:(\\d+):(\\d+)`, "g"),
        (_, l, c) => `${cmFile}:${start + Number(l)}:${indent + Number(c)}`,
      );
      return [`exit ${r.status}: ${msg}`];
    }
    if (!/OK/.test(r.stdout)) return [`unexpected output: ${r.stdout.slice(0, 200)}`];
    return [];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

check("DaemonSet mode: the config watches pods and names the node through the downward API", () => {
  if (!cfg) return ["no config"];
  const k = cfg.discovery?.kubernetes;
  if (!k) return ["no discovery.kubernetes section: the DaemonSet would attach no pod"];
  const problems = [];
  const ds = one("DaemonSet", problems);
  const env = ds?.spec?.template?.spec?.containers?.flatMap((c) => c.env ?? []) ?? [];
  const nodeEnv = k.node_name_env ?? "NODE_NAME";
  const e = env.find((v) => v.name === nodeEnv);
  return e?.valueFrom?.fieldRef?.fieldPath === "spec.nodeName" ? [] : [`no container env ${nodeEnv} from spec.nodeName`];
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
