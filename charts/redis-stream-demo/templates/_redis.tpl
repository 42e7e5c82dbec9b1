{{/* Redis: where it is for the chosen redis.mode, how the services and KEDA reach it. */}}

{{/* redis.mode, one predicate each: "true" or empty. */}}
{{- define "rsd.redis.embedded" -}}
{{- if eq .Values.redis.mode "embedded" }}true{{ end }}
{{- end }}

{{/* Your own Redis, in any of the modes standalone, sentinel and cluster. */}}
{{- define "rsd.redis.external" -}}
{{- if ne .Values.redis.mode "embedded" }}true{{ end }}
{{- end }}

{{- define "rsd.redis.sentinel" -}}
{{- if eq .Values.redis.mode "sentinel" }}true{{ end }}
{{- end }}

{{- define "rsd.redis.cluster" -}}
{{- if eq .Values.redis.mode "cluster" }}true{{ end }}
{{- end }}

{{/*
The request stream keys as a JSON list, as the services name them
(app.shared.contract.request_streams): the tags come from files/shard-tags.json,
written by scripts/shard_tags.py, since helm cannot compute a cluster slot.
*/}}
{{- define "rsd.requestStreams" -}}
{{- include "rsd.requestStreamsOf" (dict "root" . "shards" .Values.config.requestStreamShards) -}}
{{- end }}

{{/* The same for a given shard count (dict "root" . "shards" N): a count being changed from. */}}
{{- define "rsd.requestStreamsOf" -}}
{{- $shards := int .shards -}}
{{- $base := .root.Values.config.requestStream -}}
{{- if and (eq $shards 1) (not (include "rsd.redis.cluster" .root)) -}}
{{- list $base | toJson -}}
{{- else -}}
{{- $streams := list -}}
{{- range index (fromJson (.root.Files.Get "files/shard-tags.json")) (toString $shards) -}}
{{- $streams = append $streams (printf "%s:{%s}" $base .) -}}
{{- end -}}
{{- $streams | toJson -}}
{{- end -}}
{{- end }}

{{/* Whether KEDA needs a TriggerAuthentication: a password for Redis or for the Sentinels. */}}
{{- define "rsd.keda.authenticated" -}}
{{- if or (include "rsd.redis.secretName" .) (and (include "rsd.redis.sentinel" .) .Values.redis.external.sentinel.existingSecret) }}true{{ end }}
{{- end }}

{{/* host:port of Redis, for KEDA. */}}
{{- define "rsd.redis.address" -}}
{{- if include "rsd.redis.embedded" . }}
{{- printf "%s.%s.svc:6379" (include "rsd.redis.fullname" .) .Release.Namespace }}
{{- else if .Values.redis.external.host }}
{{- printf "%s:%v" .Values.redis.external.host .Values.redis.external.port }}
{{- else }}
{{- fail "worker.keda.enabled with an external Redis needs redis.external.host and redis.external.port" }}
{{- end }}
{{- end }}

{{/* REDIS_URL without credentials. */}}
{{- define "rsd.redis.url" -}}
{{- $external := .Values.redis.external -}}
{{- if include "rsd.redis.embedded" . }}
{{- printf "redis://%s:6379/0" (include "rsd.redis.fullname" .) }}
{{- else if include "rsd.redis.sentinel" . }}
{{- /* Sentinel mode reads only the database number (and rediss:// for TLS) from the URL. */}}
{{- printf "%s://%s/%v" (ternary "rediss" "redis" $external.tls.enabled) $external.sentinel.masterName $external.db }}
{{- else if $external.url }}
{{- $external.url }}
{{- else }}
{{- /* The schema requires url or host in standalone and cluster mode. */}}
{{- printf "%s://%s:%v/%v" (ternary "rediss" "redis" $external.tls.enabled) $external.host $external.port $external.db }}
{{- end }}
{{- end }}

{{/* Secret and key holding the Redis password, empty when there is none. */}}
{{- define "rsd.redis.secretName" -}}
{{- if include "rsd.redis.embedded" . }}
{{- default (include "rsd.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "rsd.redis.secretKey" -}}
{{- if include "rsd.redis.embedded" . }}
{{- .Values.redis.auth.existingSecretKey }}
{{- else }}
{{- .Values.redis.external.existingSecretKey }}
{{- end }}
{{- end }}

{{/* ConfigMap entries both services read for Redis: where it is, how the keys are laid out and how writes are confirmed. */}}
{{- define "rsd.redis.config" -}}
REDIS_URL: {{ include "rsd.redis.url" . | quote }}
REDIS_CLUSTER: {{ ternary "true" "false" (eq (include "rsd.redis.cluster" .) "true") | quote }}
REQUEST_STREAM_SHARDS: {{ .Values.config.requestStreamShards | quote }}
{{- if and (include "rsd.redis.cluster" .) .Values.redis.external.cluster.nodes }}
REDIS_CLUSTER_NODES: {{ join "," .Values.redis.external.cluster.nodes | quote }}
{{- end }}
{{- if include "rsd.redis.sentinel" . }}
{{- with .Values.redis.external.sentinel }}
REDIS_SENTINELS: {{ join "," .hosts | quote }}
REDIS_SENTINEL_MASTER: {{ .masterName | quote }}
REDIS_SENTINEL_TLS: {{ .tls | quote }}
{{- with .username }}
REDIS_SENTINEL_USERNAME: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
REDIS_WAIT_REPLICAS: {{ .Values.config.redisWaitReplicas | quote }}
REDIS_WAIT_TIMEOUT_MS: {{ .Values.config.redisWaitTimeoutMs | quote }}
{{- end }}

{{/* Ports of the Sentinels, from their host:port addresses. */}}
{{- define "rsd.redis.sentinelPorts" -}}
{{- $ports := list }}
{{- range .Values.redis.external.sentinel.hosts }}
{{- $ports = append $ports (last (splitList ":" .)) }}
{{- end }}
{{- join "," (uniq $ports) }}
{{- end }}

{{/* Ports of the cluster nodes listed in redis.external.cluster.nodes. */}}
{{- define "rsd.redis.clusterPorts" -}}
{{- $ports := list }}
{{- range .Values.redis.external.cluster.nodes }}
{{- $ports = append $ports (last (splitList ":" .)) }}
{{- end }}
{{- join "," (uniq $ports) }}
{{- end }}

{{/* Environment both services need for Redis: credentials from the Secret, TLS files. */}}
{{/* The Redis environment of a service: (dict "root" . "component" "proxy"|"worker"). */}}
{{- define "rsd.redis.env" -}}
{{- $component := .component -}}
{{- with .root -}}
{{- $own := dict -}}
{{- if include "rsd.redis.external" . }}{{ $own = index .Values.redis.external.users $component | default dict }}{{ end -}}
{{- if include "rsd.redis.acl" . }}
# Its own ACL user (redis.auth.mode acl).
- name: REDIS_USERNAME
  value: {{ $component | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "rsd.redis.secretName" . }}
      key: {{ printf "%s-password" $component }}
{{- else if $own.username }}
# Its own user of the external Redis (redis.external.users).
- name: REDIS_USERNAME
  value: {{ $own.username | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "redis.external.users.%s.existingSecret is required with its username" $component) $own.existingSecret }}
      key: {{ $own.existingSecretKey | default "password" }}
{{- else if include "rsd.redis.secretName" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "rsd.redis.secretName" . }}
      key: {{ include "rsd.redis.secretKey" . }}
{{- end }}
{{- if and (include "rsd.redis.sentinel" .) .Values.redis.external.sentinel.existingSecret }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.sentinel.existingSecret }}
      key: {{ .Values.redis.external.sentinel.existingSecretKey }}
{{- end }}
{{- if and (include "rsd.redis.external" .) .Values.redis.external.username (not $own.username) }}
- name: REDIS_USERNAME
  value: {{ .Values.redis.external.username | quote }}
{{- end }}
{{- if and (include "rsd.redis.external" .) .Values.redis.external.tls.enabled .Values.redis.external.tls.secretName }}
- name: REDIS_TLS_CA_FILE
  value: /etc/redis-tls/ca.crt
{{- if .Values.redis.external.tls.clientCertificate }}
- name: REDIS_TLS_CERT_FILE
  value: /etc/redis-tls/tls.crt
- name: REDIS_TLS_KEY_FILE
  value: /etc/redis-tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rsd.redis.tlsVolumeMount" -}}
{{- if and (include "rsd.redis.external" .) .Values.redis.external.tls.enabled .Values.redis.external.tls.secretName }}
- name: redis-tls
  mountPath: /etc/redis-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "rsd.redis.tlsVolume" -}}
{{- if and (include "rsd.redis.external" .) .Values.redis.external.tls.enabled .Values.redis.external.tls.secretName }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.external.tls.secretName }}
{{- end }}
{{- end }}

{{/* A KEDA trigger's type and the metadata that follow from redis.mode (the stream and lag targets are added by the ScaledObject). */}}
{{- define "rsd.keda.trigger" -}}
{{- $external := .Values.redis.external -}}
{{- if include "rsd.redis.cluster" . }}
type: redis-cluster-streams
metadata:
  addresses: {{ join "," (default (list (include "rsd.redis.address" .)) $external.cluster.nodes) | quote }}
{{- else if include "rsd.redis.sentinel" . }}
type: redis-sentinel-streams
metadata:
  addresses: {{ join "," $external.sentinel.hosts | quote }}
  sentinelMaster: {{ $external.sentinel.masterName | quote }}
{{- else }}
type: redis-streams
metadata:
  address: {{ include "rsd.redis.address" . | quote }}
{{- end }}
{{- if and (include "rsd.redis.external" .) $external.tls.enabled }}
  enableTLS: "true"
{{- end }}
{{- if and (include "rsd.redis.external" .) (not (include "rsd.redis.cluster" .)) }}
  databaseIndex: {{ $external.db | quote }}
{{- end }}
{{- end }}

{{/* Whether the embedded Redis runs with a user per component (redis.auth.mode acl). */}}
{{- define "rsd.redis.acl" -}}
{{- if and (include "rsd.redis.embedded" .) (eq .Values.redis.auth.mode "acl") }}true{{ end }}
{{- end }}

{{/* The Secret keys of the embedded Redis's passwords, as a JSON list. */}}
{{- define "rsd.redis.passwordKeys" -}}
{{- $keys := list .Values.redis.auth.existingSecretKey -}}
{{- if include "rsd.redis.acl" . -}}
{{- range $entry := (fromJson (.Files.Get "files/redis-acl.json")).users -}}
{{- if ne $entry.user "admin" }}{{ $keys = append $keys $entry.secretKey }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $keys | toJson -}}
{{- end }}

{{/*
The embedded Redis's ACL file with %REQUEST_STREAM% filled in and each password's place
(@<secret key>@) left for the pod's start script: app.shared.acl's rules, through
files/redis-acl.json (scripts/redis_acl_json.py).
*/}}
{{- define "rsd.redis.aclTemplate" -}}
{{- $acl := fromJson (.Files.Get "files/redis-acl.json") -}}
{{- range $index, $entry := $acl.users }}
{{- $line := replace "%REQUEST_STREAM%" $.Values.config.requestStream $entry.line }}
{{- if eq $entry.user "admin" }}{{ $line = replace "@redis-password@" (printf "@%s@" $.Values.redis.auth.existingSecretKey) $line }}{{ end }}
{{- if $index }}{{ "\n" }}{{ end }}{{ $line }}
{{- end }}
{{ $acl.last }}
{{- end }}

{{/* The environment variable of a user's password in the Redis pod (and for tools.redis_acl). */}}
{{- define "rsd.redis.aclVariable" -}}
{{- printf "REDIS_ACL_%s_PASSWORD" (upper .) -}}
{{- end }}
