{{- define "diploi.labels" -}}
app.kubernetes.io/name: diploi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "diploi.selector" -}}
app.kubernetes.io/name: diploi
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "diploi.secretName" -}}
{{ .Values.existingSecret | default (printf "%s-diploi" .Release.Name) }}
{{- end }}

{{- define "diploi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The container every process shares: image, settings, secrets; `args` is its command. */}}
{{- define "diploi.container" -}}
- name: {{ .component }}
  image: {{ include "diploi.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: {{ toJson .command }}
  envFrom:
    - configMapRef:
        name: {{ .root.Release.Name }}-diploi
    - secretRef:
        name: {{ include "diploi.secretName" .root }}
  {{- with .env }}
  env: {{ toJson . }}
  {{- end }}
  resources: {{ toJson .resources }}
  securityContext:
    allowPrivilegeEscalation: false
    runAsNonRoot: true
    capabilities: {drop: ["ALL"]}
{{- end }}
