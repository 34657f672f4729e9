// Validates Kubernetes objects (a JSON array, from the file named by the first argument)
// against the schemas of the kubernetes-models packages: Kubernetes itself, KEDA and the
// prometheus-operator. Prints one line per object; exits 1 when any is invalid or of a kind
// it has no schema for.
import { readFileSync } from "node:fs";

const packages = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const pkg = packages[group] ?? "kubernetes-models";
  const path = group === "" ? `${pkg}/${version}/${kind}` : `${pkg}/${group}/${version}/${kind}`;
  const mod = await import(path);
  return mod[kind];
}

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const obj of objects) {
  const id = `${obj.apiVersion}/${obj.kind} ${obj.metadata?.name}`;
  try {
    const Model = await modelFor(obj.apiVersion, obj.kind);
    new Model(obj).validate();
    console.log(`valid: ${id}`);
  } catch (err) {
    failed++;
    console.log(`INVALID: ${id}: ${err.message}`);
  }
}
process.exit(failed ? 1 : 0);
