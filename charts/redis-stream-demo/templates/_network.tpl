{{/* NetworkPolicy pieces the components share. */}}

{{/* Egress every service pod needs: DNS and Redis. */}}
{{- define "rsd.egressToDnsAndRedis" -}}
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dnsNamespaceSelector | nindent 8 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- if include "rsd.redis.embedded" . }}
- to:
    - podSelector:
        matchLabels:
          {{- include "rsd.selectorLabels" (dict "root" . "component" "redis") | nindent 10 }}
  ports:
    - port: 6379
      protocol: TCP
{{- else }}
- {{- with .Values.redis.external.cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
  ports:
    - port: {{ .Values.redis.external.port }}
      protocol: TCP
    {{- if include "rsd.redis.sentinel" . }}
    {{- range splitList "," (include "rsd.redis.sentinelPorts" .) }}
    - port: {{ atoi . }}
      protocol: TCP
    {{- end }}
    {{- end }}
    {{- if include "rsd.redis.cluster" . }}
    {{- range $port := include "rsd.redis.clusterPorts" . | splitList "," | compact }}
    {{- if ne (atoi $port) (int $.Values.redis.external.port) }}
    - port: {{ atoi $port }}
      protocol: TCP
    {{- end }}
    {{- end }}
    {{- end }}
{{- end }}
{{- end }}
