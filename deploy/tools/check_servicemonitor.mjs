// Validate ServiceMonitor objects against the prometheus-operator CRD schema, using the
// validators generated from that CRD by the npm package @kubernetes-models/prometheus-operator
// (kubernetes-validate has built-in Kubernetes schemas only, no CRDs).
//
//   node check_servicemonitor.mjs NODE_PREFIX < servicemonitors.json
//
// NODE_PREFIX: the directory whose node_modules holds the package (validate.sh installs it).
// stdin: a JSON array of ServiceMonitor objects. The generated validators check types,
// patterns and required fields but allow unknown fields, so keys of spec and of each
// endpoint are also checked against the property names the package's typings declare.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const prefix = process.argv[2];
if (!prefix) {
  console.error("usage: node check_servicemonitor.mjs NODE_PREFIX < servicemonitors.json");
  process.exit(2);
}
const pkg = join(prefix, "node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const { ServiceMonitor } = await import(pathToFileURL(join(pkg, "index.js")).href);

// Property names of the interface declared in a .d.ts file of the package.
function declaredKeys(file) {
  const text = readFileSync(join(pkg, file), "utf8");
  return new Set([...text.matchAll(/^\s+"([A-Za-z0-9_]+)"\??:/gm)].map((m) => m[1]));
}
const specKeys = declaredKeys("ServiceMonitorSpec.d.ts");
const endpointKeys = declaredKeys("Endpoint.d.ts");
if (specKeys.size < 5 || endpointKeys.size < 5) {
  console.error("could not read property names from the package's typings");
  process.exit(2);
}

const objects = JSON.parse(readFileSync(0, "utf8"));
let problems = 0;
for (const obj of objects) {
  const name = `ServiceMonitor/${obj?.metadata?.name}`;
  try {
    new ServiceMonitor(obj).validate();
  } catch (e) {
    console.log(`ERROR ${name}: ${e.message}`);
    problems++;
  }
  for (const k of Object.keys(obj.spec ?? {})) {
    if (!specKeys.has(k)) {
      console.log(`ERROR ${name}: unknown field spec.${k}`);
      problems++;
    }
  }
  (obj.spec?.endpoints ?? []).forEach((ep, i) => {
    for (const k of Object.keys(ep)) {
      if (!endpointKeys.has(k)) {
        console.log(`ERROR ${name}: unknown field spec.endpoints[${i}].${k}`);
        problems++;
      }
    }
  });
  if (!problems) console.log(`ok ${name}: valid against the monitoring.coreos.com/v1 CRD schema`);
}
process.exit(problems ? 1 : 0);
