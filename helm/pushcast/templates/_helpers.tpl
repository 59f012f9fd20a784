{{/*
Names. fullname is truncated at 63 characters (the DNS label limit) less room for the
longest suffix the chart adds ("-worker-headless", 16), so every name stays valid.
*/}}
{{- define "pushcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 47 | trimSuffix "-" }}
{{- end }}

{{- define "pushcast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pushcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "pushcast.labels" -}}
helm.sh/chart: {{ include "pushcast.chart" . }}
{{ include "pushcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pushcast
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pushcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pushcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels: call with (dict "ctx" $ "component" "controller").
*/}}
{{- define "pushcast.componentLabels" -}}
{{ include "pushcast.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pushcast.componentSelectorLabels" -}}
{{ include "pushcast.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Services the optional ServiceMonitor scrapes carry this label. */}}
{{- define "pushcast.metricsLabel" -}}
pushcast.io/metrics: "true"
{{- end }}

{{- define "pushcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pushcast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The pushcast image (both binaries live in it). */}}
{{- define "pushcast.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secret holding the access token(s) and the webhook secret. */}}
{{- define "pushcast.secretName" -}}
{{- default (include "pushcast.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* Bundled etcd: names and member list. */}}
{{- define "pushcast.etcd.fullname" -}}
{{- printf "%s-etcd" (include "pushcast.fullname" .) }}
{{- end }}

{{- define "pushcast.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "pushcast.fullname" .) }}
{{- end }}

{{/* DNS name of bundled member $i: call with (list $ $i). */}}
{{- define "pushcast.etcd.memberHost" -}}
{{- $ := index . 0 }}
{{- printf "%s-%d.%s.%s.svc.%s" (include "pushcast.etcd.fullname" $) (index . 1) (include "pushcast.etcd.headless" $) $.Release.Namespace $.Values.clusterDomain }}
{{- end }}

{{/* --initial-cluster of the bundled etcd: name=http://host:2380,... */}}
{{- define "pushcast.etcd.initialCluster" -}}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $members = append $members (printf "%s-%d=http://%s:%d" (include "pushcast.etcd.fullname" $) $i (include "pushcast.etcd.memberHost" (list $ $i)) (int $.Values.etcd.bundled.ports.peer)) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/* PUSHCAST_ETCD_ENDPOINTS: every bundled member, or the external list. */}}
{{- define "pushcast.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "bundled" }}
{{- $eps := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $eps = append $eps (printf "http://%s:%d" (include "pushcast.etcd.memberHost" (list $ $i)) (int $.Values.etcd.bundled.ports.client)) }}
{{- end }}
{{- join "," $eps }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/*
Checks on values that the schema cannot express; rendered once (from the Secret
template) so a bad combination fails `helm install` / `helm template` with a clear message.
*/}}
{{- define "pushcast.validateValues" -}}
{{- if eq .Values.etcd.mode "external" }}
{{- if not .Values.etcd.external.endpoints }}
{{- fail "etcd.mode=external needs etcd.external.endpoints (e.g. [\"https://etcd-0.etcd:2379\"])" }}
{{- end }}
{{- if and .Values.etcd.external.tls.enabled (not .Values.etcd.external.tls.secretName) }}
{{- fail "etcd.external.tls.enabled needs etcd.external.tls.secretName" }}
{{- end }}
{{- if and .Values.etcd.external.auth.username (not .Values.etcd.external.auth.existingSecret) }}
{{- fail "etcd.external.auth.username needs etcd.external.auth.existingSecret (a Secret holding the password)" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.etcd.mode "bundled") (not (has (int .Values.etcd.bundled.replicas) (list 1 3))) }}
{{- fail "etcd.bundled.replicas must be 1 or 3" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if and .Values.worker.drain.enabled (ge (int .Values.worker.drain.maxSeconds) (int .Values.worker.terminationGracePeriodSeconds)) }}
{{- fail "worker.drain.maxSeconds must be below worker.terminationGracePeriodSeconds (the process needs time to stop after the drain)" }}
{{- end }}
{{- end }}

{{/* Pod anti-affinity preset ("soft" / "hard" / ""): call with (dict "ctx" $ "component" "worker" "preset" "soft"). */}}
{{- define "pushcast.antiAffinity" -}}
{{- if eq .preset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "pushcast.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
{{- else if eq .preset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "pushcast.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end }}

{{/* Environment every pushcast process shares. */}}
{{- define "pushcast.commonEnv" -}}
- name: PUSHCAST_ETCD_ENDPOINTS
  value: {{ include "pushcast.etcd.endpoints" . | quote }}
- name: PUSHCAST_ETCD_PREFIX
  value: {{ .Values.etcd.prefix | quote }}
- name: PUSHCAST_ETCD_TIMEOUT_MS
  value: {{ .Values.etcd.timeoutMs | quote }}
- name: PUSHCAST_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PUSHCAST_DATA_DIR
  value: /var/lib/pushcast
- name: PUSHCAST_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: RUST_LOG
  value: {{ .Values.logging.level | quote }}
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: PUSHCAST_ETCD_CA_FILE
  value: /etc/pushcast/etcd-tls/{{ .Values.etcd.external.tls.caKey }}
{{- if .Values.etcd.external.tls.certKey }}
- name: PUSHCAST_ETCD_CERT_FILE
  value: /etc/pushcast/etcd-tls/{{ .Values.etcd.external.tls.certKey }}
- name: PUSHCAST_ETCD_KEY_FILE
  value: /etc/pushcast/etcd-tls/{{ .Values.etcd.external.tls.keyKey }}
{{- end }}
{{- end }}
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.auth.username }}
- name: PUSHCAST_ETCD_USERNAME
  value: {{ .Values.etcd.external.auth.username | quote }}
- name: PUSHCAST_ETCD_PASSWORD_FILE
  value: /etc/pushcast/etcd-auth/{{ .Values.etcd.external.auth.passwordKey }}
{{- end }}
{{- if .Values.callbacks.ca.secretName }}
- name: PUSHCAST_WEBHOOK_CA_FILE
  value: /etc/pushcast/webhook-ca/{{ .Values.callbacks.ca.key }}
{{- end }}
{{- end }}

{{/* Volumes every pushcast pod has: writable dirs on a read-only root, etcd TLS. */}}
{{- define "pushcast.commonVolumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDirSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.external.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.auth.username }}
- name: etcd-auth
  secret:
    secretName: {{ .Values.etcd.external.auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.etcd.external.auth.passwordKey }}
        path: {{ .Values.etcd.external.auth.passwordKey }}
{{- end }}
{{- if .Values.callbacks.ca.secretName }}
- name: webhook-ca
  secret:
    secretName: {{ .Values.callbacks.ca.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "pushcast.commonVolumeMounts" -}}
- name: data
  mountPath: /var/lib/pushcast
- name: tmp
  mountPath: /tmp
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/pushcast/etcd-tls
  readOnly: true
{{- end }}
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.auth.username }}
- name: etcd-auth
  mountPath: /etc/pushcast/etcd-auth
  readOnly: true
{{- end }}
{{- if .Values.callbacks.ca.secretName }}
- name: webhook-ca
  mountPath: /etc/pushcast/webhook-ca
  readOnly: true
{{- end }}
{{- end }}
