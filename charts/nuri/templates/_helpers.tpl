{{/* Names and labels. */}}
{{- define "nuri.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nuri.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nuri.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nuri.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-secrets" (include "nuri.fullname" .)) -}}
{{- end -}}

{{- define "nuri.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{- define "nuri.postgresHost" -}}
{{- printf "%s-postgresql" (include "nuri.fullname" .) -}}
{{- end -}}

{{- define "nuri.rayHead" -}}
{{- printf "%s-ray-head-svc" (include "nuri.fullname" .) -}}
{{- end -}}

{{- define "nuri.checkpointClaim" -}}
{{- .Values.checkpoints.existingClaim | default (printf "%s-checkpoints" (include "nuri.fullname" .)) -}}
{{- end -}}

{{/* The environment every control-plane container shares. */}}
{{- define "nuri.env" -}}
- name: NURI_ENV
  value: prod
- name: NURI_HOME
  value: /var/lib/nuri
- name: NURI_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "nuri.secretName" . }}, key: database-url}
- name: NURI_BOOTSTRAP_ADMIN_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "nuri.secretName" . }}, key: bootstrap-admin-token}
- name: NURI_AUDIT_KEY_PATH
  value: /var/run/nuri/audit/audit-signing-key.pem
- name: NURI_JOBS_DIR
  value: {{ .Values.checkpoints.mountPath | quote }}
- name: NURI_RAY_ADDRESS
  value: {{ printf "ray://%s:10001" (include "nuri.rayHead" .) | quote }}
- name: RAY_AUTH_MODE
  value: disabled
{{- with (.Values.tracing | default dict).otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The API's request limits and trusted proxies (see values: api). */}}
{{- define "nuri.apiEnv" -}}
- name: NURI_MAX_REQUEST_BYTES
  value: {{ .Values.api.maxRequestBytes | default 1048576 | int | quote }}
- name: NURI_RATE_LIMIT_PER_S
  value: {{ dig "rateLimit" "perSecond" 50 .Values.api | toString | quote }}
- name: NURI_RATE_LIMIT_BURST
  value: {{ dig "rateLimit" "burst" 200 .Values.api | int | quote }}
{{- with .Values.api.trustedProxies }}
- name: NURI_TRUSTED_PROXIES
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The metrics listener on the pod's own address (see values: metrics). */}}
{{- define "nuri.metricsEnv" -}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: NURI_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: NURI_METRICS_HOST
  value: "$(POD_IP)"
{{- end -}}

{{- define "nuri.metricsAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ .Values.metrics.port | quote }}
  prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "nuri.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "nuri.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}
