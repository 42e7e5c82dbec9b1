"""The rendered chart as pods for `podman kube play`: the few adaptations a runtime without a
Kubernetes control plane needs, and nothing else (the README lists them).

- A Deployment becomes its pod template played N times (pods <name>-0, -1, ...); a StatefulSet
  becomes one pod <name>-0 with its volumeClaimTemplates as PersistentVolumeClaims (podman volumes
  named <claim>-<pod>, as a StatefulSet names its PVCs).
- There is no Service and no cluster DNS: every pod gets hostAliases that resolve each Service's
  names (<svc>, <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.cluster.local) to the fixed IP of the pod
  it selects (a pod played again keeps its IP and MAC); the Service port equals the container port
  (values-e2e.yaml).
- emptyDir volumes are named per pod: podman 4.3 turns each into a named volume, which pods using
  the same volume name would otherwise share.
- containerPorts are dropped: podman 4.3 publishes each one on the host (0.0.0.0:6379, :8080, :9100),
  which Kubernetes never does and which two replicas cannot share. Pods are reached at their IPs.
- $(VAR) references in command and args are expanded from the container's env, as the kubelet does
  and podman 4.3 does not (the Redis pod's `--requirepass $(REDIS_PASSWORD)`).
Containers, commands, args, env, envFrom, securityContext, resources, probes and mounts are otherwise
the chart's. (Probes become podman healthchecks that run curl inside the image: they never pass.)
"""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


@dataclass
class Workload:
    kind: str
    name: str
    labels: dict[str, str]
    template: dict
    claims: list[dict] = field(default_factory=list)


def workloads(docs: list[dict]) -> dict[str, Workload]:
    """By component label: proxy, worker, redis."""
    found = {}
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            template = doc["spec"]["template"]
            component = template["metadata"]["labels"]["app.kubernetes.io/component"]
            found[component] = Workload(doc["kind"], doc["metadata"]["name"], template["metadata"]["labels"],
                                        template, doc["spec"].get("volumeClaimTemplates", []))
    return found


def helm_test_pods(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == "Pod"
            and doc["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]


def service_names(docs: list[dict], namespace: str) -> dict[str, list[str]]:
    """Service DNS names by the component each one selects."""
    names: dict[str, list[str]] = {}
    for doc in docs:
        if doc["kind"] == "Service":
            component = doc["spec"]["selector"]["app.kubernetes.io/component"]
            service = doc["metadata"]["name"]
            names.setdefault(component, []).extend([
                service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
                f"{service}.{namespace}.svc.cluster.local",
            ])
    return names


def config_documents(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == "ConfigMap"]


def secrets(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == "Secret"]


def _env_values(container: dict, docs: list[dict]) -> dict[str, str]:
    values = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            values[entry["name"]] = str(entry["value"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            [secret] = [doc for doc in secrets(docs) if doc["metadata"]["name"] == ref["name"]]
            values[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            [config] = [doc for doc in config_documents(docs) if doc["metadata"]["name"] == ref["name"]]
            values[entry["name"]] = str(config["data"][ref["key"]])
    return values


def _expand_references(container: dict, docs: list[dict]) -> None:
    values = _env_values(container, docs)

    def expand(text: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m.group(1), m.group(0)), text)

    for key in ("command", "args"):
        if key in container:
            container[key] = [expand(item) for item in container[key]]


def as_pod(template: dict, name: str, host_aliases: dict[str, list[str]], docs: list[dict]) -> dict:
    """``template`` is a pod template or a Pod; ``host_aliases`` maps IPs to Service names; ``docs``
    is the whole rendering (Secrets and ConfigMaps for $(VAR) expansion)."""
    spec = copy.deepcopy(template["spec"])
    spec["hostAliases"] = [{"ip": ip, "hostnames": names} for ip, names in host_aliases.items()]
    for container in spec["containers"]:
        container.pop("ports", None)
        _expand_references(container, docs)
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume:
            renamed = f"{name}-{volume['name']}"
            for container in spec["containers"]:
                for mount in container.get("volumeMounts", []):
                    if mount["name"] == volume["name"]:
                        mount["name"] = renamed
            volume["name"] = renamed
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": dict(template["metadata"].get("labels", {}))}, "spec": spec}


def workload_pod(workload: Workload, index: int, host_aliases: dict[str, list[str]], docs: list[dict]) -> dict:
    """The pod of ``workload`` with this ordinal, mounting its claims as a StatefulSet pod does."""
    name = f"{workload.name}-{index}"
    pod = as_pod(workload.template, name, host_aliases, docs)
    for template in workload.claims:
        pod["spec"].setdefault("volumes", []).append(
            {"name": template["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name(template, name)}})
    return pod


def claim_name(template: dict, pod_name: str) -> str:
    return f"{template['metadata']['name']}-{pod_name}"


def claims(workload: Workload, index: int) -> list[dict]:
    """The PersistentVolumeClaims of a StatefulSet pod: created once, kept when the pod is replaced."""
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": claim_name(template, f"{workload.name}-{index}")}, "spec": template["spec"]}
            for template in workload.claims]
