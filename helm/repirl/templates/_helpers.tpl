{{- define "repirl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "repirl.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "repirl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "repirl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* selector labels of one component: call with (dict "ctx" $ "component" "server") */}}
{{- define "repirl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "repirl.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "repirl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "repirl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "repirl.image" -}}
{{- $variant := ternary "gpu" "cpu" .Values.gpu.enabled -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion $variant) -}}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "repirl.redisUrl" -}}
{{- if eq .Values.redis.mode "internal" -}}
redis://{{ include "repirl.fullname" . }}-redis:6379/0
{{- else if and (eq .Values.redis.mode "external") (not .Values.redis.external.existingSecret) -}}
{{ .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/* the Secret (name, key) holding the internal Redis's password; empty without AUTH */}}
{{- define "repirl.redisPasswordSecret" -}}
{{- $a := .Values.redis.internal.auth -}}
{{- if and (eq .Values.redis.mode "internal") $a.enabled -}}
{{- if $a.existingSecret }}{{ $a.existingSecret }}{{ else }}{{ include "repirl.fullname" . }}-redis{{ end -}}
{{- end -}}
{{- end }}

{{- define "repirl.redisPasswordKey" -}}
{{- if .Values.redis.internal.auth.existingSecret }}{{ .Values.redis.internal.auth.existingSecretKey }}{{ else }}redis-password{{ end -}}
{{- end }}

{{- define "repirl.policyUrl" -}}
{{- if eq .Values.policy.mode "vllm" -}}
http://{{ include "repirl.fullname" . }}-policy:{{ .Values.policy.vllm.port }}/v1
{{- else if eq .Values.policy.mode "url" -}}
{{ .Values.policy.url }}
{{- else if eq .Values.policy.mode "path" -}}
{{ .Values.policy.path }}
{{- end }}
{{- end }}

{{- define "repirl.apiKeySecret" -}}
{{- if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecret }}{{ else if .Values.apiKeys.keys }}{{ include "repirl.fullname" . }}-api-keys{{ end }}
{{- end }}

{{/* the settings file: values' settings + what the chart decides (host, port, redis_url, policy, api_key_file) */}}
{{- define "repirl.settingsYaml" -}}
{{- $s := deepCopy .Values.settings -}}
{{- if not $s.limits }}{{ $_ := unset $s "limits" }}{{ end -}}
{{- $_ := set $s "host" "0.0.0.0" -}}
{{- $_ := set $s "port" (int .Values.service.port) -}}
{{- $redis := include "repirl.redisUrl" . -}}
{{- if $redis }}{{ $_ := set $s "redis_url" $redis }}{{ end -}}
{{- $policy := include "repirl.policyUrl" . -}}
{{- if $policy }}{{ $_ := set $s "policy" $policy }}{{ end -}}
{{- toYaml $s }}
{{- end }}

{{- define "repirl.validate" -}}
{{- $min := add (int .Values.preStopSleepSeconds) (int (ceil .Values.settings.drain_timeout_s)) -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $min) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be >= preStopSleepSeconds + settings.drain_timeout_s (%v)" .Values.terminationGracePeriodSeconds $min) -}}
{{- end -}}
{{- if and (eq .Values.policy.mode "vllm") (gt (int .Values.policy.vllm.tensorParallelSize) (int .Values.policy.vllm.gpuCount)) -}}
{{- fail "policy.vllm.tensorParallelSize must be <= policy.vllm.gpuCount" -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.mode=external needs redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (include "repirl.apiKeySecret" .) (not .Values.serviceMonitor.bearerTokenSecret.name) (not (has "/metrics" (default (list) .Values.settings.public_paths))) -}}
{{- fail "serviceMonitor with apiKeys: /metrics needs a key; set serviceMonitor.bearerTokenSecret (a Secret holding one) or list /metrics in settings.public_paths" -}}
{{- end -}}
{{- if and (eq .Values.policy.mode "url") (not .Values.policy.url) -}}
{{- fail "policy.mode=url needs policy.url" -}}
{{- end -}}
{{- if and (eq .Values.policy.mode "path") (not .Values.policy.path) -}}
{{- fail "policy.mode=path needs policy.path" -}}
{{- end -}}
{{- if and (eq .Values.policy.mode "vllm") (not (or .Values.models.existingClaim .Values.models.hostPath)) -}}
{{- fail "policy.mode=vllm needs models.existingClaim or models.hostPath for the policy weights" -}}
{{- end -}}
{{- end }}

{{- define "repirl.modelsVolume" -}}
- name: models
{{- if .Values.models.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
    readOnly: true
{{- else if .Values.models.hostPath }}
  hostPath:
    path: {{ .Values.models.hostPath }}
    type: Directory
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
