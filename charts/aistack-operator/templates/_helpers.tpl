{{/* Names, labels and the operator's RBAC rules: defined once, used by every template. */}}

{{- define "aistack-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aistack-operator.fullname" -}}
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

{{- define "aistack-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object of the chart carries. */}}
{{- define "aistack-operator.labels" -}}
helm.sh/chart: {{ include "aistack-operator.chart" . }}
{{ include "aistack-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aistack
{{- end }}

{{/* The subset that selects the operator's pods. */}}
{{- define "aistack-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aistack-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aistack-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aistack-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aistack-operator.peeringName" -}}
{{- default (include "aistack-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "aistack-operator.webhookService" -}}
{{- printf "%s-webhook" (include "aistack-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aistack-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "aistack-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aistack-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
RBAC rules for the namespaces the operator serves (a ClusterRole cluster-wide, a Role per
namespace otherwise). Each rule is what kube.py, handlers.py and kopf really call; the e2e
test tests/e2e/test_helm_rbac.py runs the operator as this ServiceAccount and fails on any
refused request.
*/}}
{{- define "aistack-operator.namespacedRules" -}}
# AIStacks: kopf lists and watches them (index + event handlers); nothing writes the
# spec or metadata.
- apiGroups: [aistack.dev]
  resources: [aistacks]
  verbs: [list, watch]
# The reconciler writes the stack's status (merge patch on the status subresource).
- apiGroups: [aistack.dev]
  resources: [aistacks/status]
  verbs: [patch]
# Children carry an ownerReference with blockOwnerDeletion; clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) require update on
# the owner's finalizers for that. The operator itself never sets finalizers.
- apiGroups: [aistack.dev]
  resources: [aistacks/finalizers]
  verbs: [update]
# Children: watched (cache), server-side applied (PATCH; create when the object is new)
# and pruned (DELETE). No get: the cache is fed by the watch.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, persistentvolumeclaims]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
{{- if .Values.leaderWorkerSet.enabled }}
# The groups of multi-node models (LeaderWorkerSet, sigs.k8s.io/lws), made while its
# CRD exists.
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [list, watch, create, patch, delete]
{{- end }}
{{- if .Values.autoscaling.enabled }}
# The ScaledObjects of autoscaled models (KEDA), made while its CRDs exist.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list, watch, create, patch, delete]
{{- end }}
{{- if .Values.stackMonitoring.enabled }}
# The stacks' PodMonitors (Prometheus Operator), rendered while its CRDs exist.
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [list, watch, create, patch, delete]
{{- end }}
# Pods of the stacks: read only, to say why a model is not ready (Unschedulable, ...).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Events on the stacks (Applied, ModelReady, ModelBlocked, ...).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Secrets named as a hosted provider's key: get, asking for their metadata only
# (PartialObjectMetadata) and keeping only the labels, to check the
# aistack.dev/provider-credentials opt-in label.
# RBAC cannot grant less than the whole object; the operator never lists, watches or
# reads their data.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}

{{/* Cluster-scoped reads and writes the operator needs in either mode. */}}
{{- define "aistack-operator.clusterRules" -}}
# LicensePolicies are cluster-scoped: every stack is judged against all of them, and the
# operator reports whether each compiles in its status.
- apiGroups: [aistack.dev]
  resources: [licensepolicies]
  verbs: [list, watch]
- apiGroups: [aistack.dev]
  resources: [licensepolicies/status]
  verbs: [patch]
# kopf watches CRDs to notice resources that appear after it started (e.g. the CRDs
# installed after the operator by a GitOps tool).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
