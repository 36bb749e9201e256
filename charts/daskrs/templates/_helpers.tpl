{{/* The release's full name, at most 63 characters. */}}
{{- define "daskrs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "daskrs.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "daskrs.labels" -}}
{{ include "daskrs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "daskrs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "daskrs.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Values every template relies on; fails with the fix when they are wrong.
*/}}
{{- define "daskrs.checkValues" -}}
{{- if hasKey .Values "watchNamespace" }}
{{- fail "watchNamespace was replaced by watchNamespaces, a list: --set 'watchNamespaces={team-a}'" }}
{{- end }}
{{- if not (kindIs "slice" .Values.watchNamespaces) }}
{{- fail "watchNamespaces must be a list: --set 'watchNamespaces={team-a,team-b}'" }}
{{- end }}
{{- end }}
