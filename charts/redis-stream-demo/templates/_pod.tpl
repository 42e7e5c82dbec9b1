{{/* Pieces of the pod specs and workload objects that the components share. */}}

{{/* Pod-level security context of the services. */}}
{{- define "rsd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context (restricted Pod Security Standard). */}}
{{- define "rsd.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Whether a component can run more than one replica: (dict "values" .Values.proxy "keda" false). */}}
{{- define "rsd.multiReplica" -}}
{{- $v := .values -}}
{{- if and .keda $v.keda.enabled }}
{{- if gt (int $v.keda.maxReplicaCount) 1 }}true{{ end }}
{{- else if $v.autoscaling.enabled }}
{{- if gt (int $v.autoscaling.maxReplicas) 1 }}true{{ end }}
{{- else if gt (int $v.replicas) 1 }}true{{ end }}
{{- end }}

{{/* topologySpreadConstraints with this component's selector filled in. */}}
{{- define "rsd.topologySpread" -}}
{{- $selector := include "rsd.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- range .constraints }}
- {{- toYaml (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" $selector))) | nindent 2 }}
{{- end }}
{{- end }}

{{/* HPA resource metrics from an autoscaling block. */}}
{{- define "rsd.hpaMetrics" -}}
{{- if not (or .targetCPUUtilizationPercentage .targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- with .targetCPUUtilizationPercentage }}
- type: Resource
  resource:
    name: cpu
    target:
      type: Utilization
      averageUtilization: {{ . }}
{{- end }}
{{- with .targetMemoryUtilizationPercentage }}
- type: Resource
  resource:
    name: memory
    target:
      type: Utilization
      averageUtilization: {{ . }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget: (dict "root" $ "component" "proxy" "values" .Values.proxy "keda" false). */}}
{{- define "rsd.pdb" -}}
{{- if and .values.pdb.enabled (include "rsd.multiReplica" (dict "values" .values "keda" .keda)) }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "rsd.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "rsd.componentLabels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  {{- if ne .values.pdb.minAvailable nil }}
  minAvailable: {{ .values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "rsd.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end }}

{{/*
checkov skips that depend on image values, written where the image is chosen:
(dict "image" .Values.proxy.image "value" "proxy.image").
*/}}
{{- define "rsd.checkovImageSkips" -}}
{{- if not .image.digest }}
checkov.io/skip1: CKV_K8S_43=Pinned by tag; set {{ .value }}.digest to pin by digest
{{- end }}
{{- if ne .image.pullPolicy "Always" }}
checkov.io/skip2: CKV_K8S_15=Release tags are immutable, so {{ .value }}.pullPolicy IfNotPresent is safe
{{- end }}
{{- end }}
