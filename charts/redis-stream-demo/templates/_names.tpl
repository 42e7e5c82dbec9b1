{{/* Names and labels of every resource of the chart. */}}

{{/* Chart name. */}}
{{- define "rsd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix. */}}
{{- define "rsd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "rsd.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "rsd.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "rsd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "rsd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: redis-stream-demo
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "proxy"). */}}
{{- define "rsd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rsd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component. */}}
{{- define "rsd.componentLabels" -}}
{{ include "rsd.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rsd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rsd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: digest wins over tag, tag defaults to appVersion. */}}
{{- define "rsd.image" -}}
{{- $image := .image -}}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "rsd.redis.fullname" -}}
{{- printf "%s-redis" (include "rsd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The offered request rate in units of one worker's drain rate (README: Overload): what the
proxies were asked (admitted plus shed) over the mean of the live workers' published drain.
*/}}
{{- define "rsd.keda.demandQuery" -}}
{{- $fullname := include "rsd.fullname" . -}}
{{- $window := .Values.worker.keda.demand.window -}}
{{- $proxies := printf "namespace=%q,job=%q" .Release.Namespace (printf "%s-proxy" $fullname) -}}
{{- $workers := printf "namespace=%q,job=%q" .Release.Namespace (printf "%s-worker" $fullname) -}}
(sum(rate(weather_proxy_admitted_total{{ "{" }}{{ $proxies }}{{ "}" }}[{{ $window }}])) + (sum(rate(weather_proxy_shed_total{{ "{" }}{{ $proxies }}{{ "}" }}[{{ $window }}])) or vector(0))) / avg(weather_worker_drain_per_second{{ "{" }}{{ $workers }}{{ "}" }} > 0)
{{- end }}
