{{/* Names and labels shared by every template. */}}

{{- define "architect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "architect.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "architect.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "architect.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "architect.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "architect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "operator"). */}}
{{- define "architect.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "architect.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "architect.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "architect.operatorName" -}}
{{- printf "%s-operator" (include "architect.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "architect.daemonName" -}}
{{- printf "%s-daemon" (include "architect.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "architect.webhookService" -}}
{{- printf "%s-webhook" (include "architect.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "architect.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "architect.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Cluster-scoped objects (ClusterRoles, webhook configurations) carry the
release namespace too: two releases of the same name in two namespaces must
not claim the same object.
*/}}
{{- define "architect.clusterName" -}}
{{- printf "%s-%s" (include "architect.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The namespace of the trust Secret architect-transfer (the transfer CA's key and
the ticket key), which only the operator reads: daemons read every Secret of the
release namespace (RBAC cannot narrow their list/watch to their node's), so the
CA's key must not be there.
*/}}
{{- define "architect.trustNamespace" -}}
{{- /* dig: `helm upgrade --reuse-values` from a chart without `trust` has no such key. */ -}}
{{- $ns := dig "namespace" "" (.Values.trust | default dict) | default (printf "%s-trust" .Release.Namespace | trunc 63 | trimSuffix "-") -}}
{{- if eq $ns .Release.Namespace -}}
{{- fail (printf "trust.namespace: %q is the release namespace, where every daemon can read Secrets; the transfer CA's key needs a namespace of its own (set trust.namespace to another name)" $ns) -}}
{{- end -}}
{{- $ns -}}
{{- end -}}
