{{/* The revision, empty when unrevisioned ("default" counts as unrevisioned). */}}
{{- define "rudder.revision" -}}
{{- if and .Values.revision (ne .Values.revision "default") -}}{{ .Values.revision }}{{- end -}}
{{- end -}}

{{/* istio-operator or istio-operator-<revision>. */}}
{{- define "rudder.name" -}}
istio-operator{{ with include "rudder.revision" . }}-{{ . }}{{ end }}
{{- end -}}

{{/* Labels on every operator object (the same ones `rudder operator init` sets). */}}
{{- define "rudder.labels" -}}
istio.io/rev: {{ include "rudder.revision" . | default "default" }}
operator.istio.io/component: IstioOperator
{{- end -}}

{{/* Labels Helm-installed objects carry in addition. */}}
{{- define "rudder.helmLabels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
