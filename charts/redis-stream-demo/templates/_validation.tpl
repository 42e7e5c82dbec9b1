{{/*
Every combination of values the services would refuse at start (the cross-variable checks
of their settings), refused at install instead, so a release never crash-loops on them.
Rendered once, by validation.yaml. tests/chart/test_settings_parity.py keeps this list and
the settings' checks in step: each check of the settings has a case here, with the same
verdict on both sides.
*/}}
{{- define "rsd.validate" -}}
{{- $config := .Values.config -}}
{{- $worker := .Values.worker -}}
{{- $external := .Values.redis.external -}}
{{- $shards := int $config.requestStreamShards -}}

{{- /* Values of the chart before 1.0.0: one redis.mode replaced four booleans. */}}
{{- if or (hasKey .Values.redis "enabled") (hasKey $external "enabled") (hasKey $external.sentinel "enabled") (hasKey $external.cluster "enabled") }}
{{- fail "redis.enabled, redis.external.enabled, redis.external.sentinel.enabled and redis.external.cluster.enabled were replaced by redis.mode in chart 1.0.0: set redis.mode to embedded, standalone, sentinel or cluster and remove them (README: Moving to redis.mode)" }}
{{- end }}

{{- /* Redis topology (CommonSettings and app/shared/topology.py); one redis.mode and the schema make the rest impossible */}}
{{- if and (or (gt $shards 1) (include "rsd.redis.cluster" .)) (regexMatch "[{}]" $config.requestStream) }}
{{- fail "config.requestStream must not contain { or } when sharded: the shards add their own hash tags" }}
{{- end }}
{{- if and (include "rsd.redis.external" .) (regexMatch "^rediss?://[^/]*@" $external.url) }}
{{- fail "redis.external.url must not hold credentials (they would land in a ConfigMap): set redis.external.username and the password in the Secret named by redis.external.existingSecret" }}
{{- end }}

{{- /* Worker timings (WorkerSettings) */}}
{{- $shutdownGrace := float64 $worker.shutdownGraceSeconds -}}
{{- $claimIdle := float64 $worker.claimIdleSeconds -}}
{{- /* READ_BLOCK_MS is not a value of the chart: the worker's default, 2000 ms. */}}
{{- if le $shutdownGrace 2.0 }}
{{- fail "worker.shutdownGraceSeconds must be longer than the worker's 2 s read block (READ_BLOCK_MS), or a stopping worker is killed while it waits for entries" }}
{{- end }}
{{- if and $worker.leaseRenewSeconds (gt (mulf (float64 $worker.leaseRenewSeconds) 2.0) $claimIdle) }}
{{- fail "worker.leaseRenewSeconds must be at most half of worker.claimIdleSeconds, or entries still in work are claimed by another worker and processed twice" }}
{{- end }}
{{- if le (float64 $worker.consumerExpirySeconds) $claimIdle }}
{{- fail "worker.consumerExpirySeconds must exceed worker.claimIdleSeconds, or a consumer is removed before its entries can be claimed" }}
{{- end }}
{{- if lt (int $worker.terminals) $shards }}
{{- fail "worker.terminals must be at least config.requestStreamShards" }}
{{- end }}

{{- /* Worker scaling */}}
{{- if and $worker.keda.enabled $worker.autoscaling.enabled }}
{{- fail "worker.keda.enabled and worker.autoscaling.enabled both own the replica count: enable one" }}
{{- end }}
{{- if and $worker.keda.enabled (eq (int $worker.keda.minReplicaCount) 0) (ge (float64 $worker.keda.pollingInterval) (float64 $config.requestTimeoutSeconds)) }}
{{- fail "worker.keda.pollingInterval must be shorter than config.requestTimeoutSeconds with worker.keda.minReplicaCount 0: the first request after an idle spell waits for KEDA's poll plus a pod start" }}
{{- end }}

{{- if eq (int .Values.proxy.metricsPort) (int .Values.proxy.port) }}
{{- fail "proxy.metricsPort must differ from proxy.port: the metrics are served apart from the API" }}
{{- end }}

{{- /* JWT (ProxySettings) */}}
{{- with .Values.proxy.auth }}
{{- if .enabled }}
{{- $algorithms := splitList "," (.algorithms | replace " " "") -}}
{{- $symmetric := 0 -}}
{{- range $algorithms }}{{ if hasPrefix "HS" . }}{{ $symmetric = add1 $symmetric }}{{ end }}{{ end }}
{{- if and (gt $symmetric 0) (lt $symmetric (len $algorithms)) }}
{{- fail "proxy.auth.algorithms must be all HS* (shared secret) or all RS*/ES* (public key)" }}
{{- end }}
{{- if .jwksUrl }}
{{- if gt $symmetric 0 }}
{{- fail "proxy.auth.jwksUrl needs RS*/ES* proxy.auth.algorithms" }}
{{- end }}
{{- if .existingSecret }}
{{- fail "proxy.auth.jwksUrl and proxy.auth.existingSecret (a public key) exclude each other: set one" }}
{{- end }}
{{- if not (and .issuer .audience) }}
{{- fail "proxy.auth.jwksUrl needs proxy.auth.issuer and proxy.auth.audience: a provider's key set signs the tokens of many tenants and applications" }}
{{- end }}
{{- if not (or (hasPrefix "https://" .jwksUrl) (regexMatch "^http://(localhost|127\\.[0-9.]+|\\[::1\\])([:/]|$)" .jwksUrl)) }}
{{- fail "proxy.auth.jwksUrl must be https:// (plain http only to a loopback address)" }}
{{- end }}
{{- else if not .existingSecret }}
{{- fail "proxy.auth.existingSecret is required when proxy.auth.enabled: the Secret with the HS* shared secret (key jwt-secret) or the RS*/ES* public key (key jwt-public-key.pem), or set proxy.auth.jwksUrl" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
