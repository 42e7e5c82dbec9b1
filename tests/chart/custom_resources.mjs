// Validates custom resources against the validators that @kubernetes-models generates from
// their CRD schemas. Usage: node custom_resources.mjs <node_modules dir> < documents.json
// Prints one JSON array: {kind, name, error} per document, error null when valid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "keda.sh/v1alpha1/TriggerAuthentication": "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
};

const modules = process.argv[2];
const documents = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const document of documents) {
  const key = `${document.apiVersion}/${document.kind}`;
  const result = { kind: document.kind, name: document.metadata?.name ?? "", error: null };
  if (!(key in MODELS)) {
    result.error = `no validator for ${key}`;
  } else {
    const module = await import(pathToFileURL(join(modules, MODELS[key])).href);
    try {
      new module[document.kind](document).validate();
    } catch (error) {
      result.error = error.message;
    }
  }
  results.push(result);
}
process.stdout.write(JSON.stringify(results));
