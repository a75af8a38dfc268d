{{/* Names, labels and the pieces every service's pod shares. */}}

{{- define "streamjobs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "streamjobs.name" (dict "root" $ "component" "gateway"): the name of a component's objects. */}}
{{- define "streamjobs.name" -}}
{{- printf "%s-%s" (include "streamjobs.fullname" .root) .component -}}
{{- end -}}

{{- define "streamjobs.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamjobs.labels" -}}
{{ include "streamjobs.selectorLabels" . }}
app.kubernetes.io/part-of: streamjobs
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "streamjobs.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "streamjobs.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "streamjobs.fullname" .)) -}}
{{- end -}}

{{- define "streamjobs.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{/* The notifier pods' own names: <fullname>-notifier-<ordinal>. */}}
{{- define "streamjobs.notifierPod" -}}
{{- printf "%s-%d" (include "streamjobs.name" (dict "root" .root "component" "notifier")) .ordinal -}}
{{- end -}}

{{/* "streamjobs.perNotifier" (dict "root" $ "template" "wss://n-{ordinal}/ws"): entry i for pod i. */}}
{{- define "streamjobs.perNotifier" -}}
{{- $urls := list -}}
{{- range $i := until (int .root.Values.notifier.replicas) -}}
{{- $urls = append $urls ($.template | replace "{ordinal}" (toString $i)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The gateway relays SSE inside the cluster: each pod by its stable DNS name. */}}
{{- define "streamjobs.notifierInternalSseUrls" -}}
{{- $headless := printf "%s-pods" (include "streamjobs.name" (dict "root" .root "component" "notifier")) -}}
{{- $urls := list -}}
{{- range $i := until (int .root.Values.notifier.replicas) -}}
{{- $pod := include "streamjobs.notifierPod" (dict "root" $.root "ordinal" $i) -}}
{{- $urls = append $urls (printf "http://%s.%s.%s.svc:%d" $pod $headless $.root.Release.Namespace (int $.root.Values.notifier.ssePort)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/*
The pod spec shared by every service. Arguments: root, component, module (the -m entrypoint),
port (its port setting), env (extra container env entries, a list), ports (container ports),
grace (terminationGracePeriodSeconds).
*/}}
{{- define "streamjobs.podTemplate" -}}
{{- $v := .root.Values -}}
{{- $svc := index $v .component -}}
metadata:
  labels:
    {{- include "streamjobs.labels" . | nindent 4 }}
  annotations:
    # A settings change rolls the pods.
    checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
    checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
spec:
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- with .grace }}
  terminationGracePeriodSeconds: {{ . }}
  {{- end }}
  # Replicas of one service on different nodes where possible: losing a node then costs
  # each service one instance, which the PodDisruptionBudget and the headroom allow for.
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "streamjobs.selectorLabels" . | nindent 10 }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "streamjobs.image" .root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["python", "-m", {{ .module | quote }}]
      envFrom:
        - configMapRef:
            name: {{ include "streamjobs.fullname" .root }}-common
        - configMapRef:
            name: {{ include "streamjobs.name" . }}
      env:
        - name: INSTANCE_ID
          valueFrom:
            fieldRef: {fieldPath: metadata.name}
        - name: STREAMJOBS_AUTH_SECRET
          valueFrom:
            secretKeyRef: {name: {{ include "streamjobs.secretName" .root }}, key: auth-secret}
        {{- if has .component (list "gateway" "results") }}
        {{- /* Signs webhooks; absent: a key derived from the auth secret. */}}
        - name: WEBHOOK_SIGNING_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "streamjobs.secretName" .root }}
              key: webhook-signing-key
              optional: true
        {{- end }}
        {{- if include "streamjobs.sasl" .root }}
        - name: KAFKA_SASL_USERNAME
          value: {{ (index $v.kafka.sasl .component).username | quote }}
        - name: KAFKA_SASL_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "streamjobs.secretName" .root }}
              key: kafka-{{ .component }}-password
        {{- end }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- toYaml .ports | nindent 8 }}
      startupProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml $v.startupProbe | nindent 8 }}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml $v.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        {{- toYaml $v.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml $svc.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        {{- if $v.kafka.caSecret.name }}
        - {name: kafka-ca, mountPath: /etc/streamjobs/kafka-ca, readOnly: true}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    {{- if $v.kafka.caSecret.name }}
    - name: kafka-ca
      secret:
        secretName: {{ $v.kafka.caSecret.name }}
        items: [{key: {{ $v.kafka.caSecret.key }}, path: ca.crt}]
    {{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for a component. */}}
{{- define "streamjobs.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "streamjobs.name" . }}
  labels:
    {{- include "streamjobs.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ (index .root.Values .component).pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "streamjobs.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/*
A service's `env` values as ConfigMap entries. A name the chart sets from its own values
(a port, the instance, a URL list, a secret) is refused: two sources would disagree.
*/}}
{{- define "streamjobs.extraEnv" -}}
{{- $common := list "KAFKA_BOOTSTRAP_SERVERS" "TOPIC_PREFIX" "JOB_PARTITIONS" "KAFKA_REPLICATION_FACTOR" "KAFKA_MIN_INSYNC_REPLICAS" "KAFKA_SECURITY_PROTOCOL" "KAFKA_SASL_MECHANISM" "KAFKA_SASL_USERNAME" "KAFKA_SASL_PASSWORD" "KAFKA_SSL_CAFILE" "STREAMJOBS_AUTH_SECRET" "WEBHOOK_SIGNING_KEY" "INSTANCE_ID" -}}
{{- range $name, $value := .env }}
{{- if has (upper $name) (concat $common $.managed) }}
{{- fail (printf "%s.env.%s: the chart sets it from its own values (see values.yaml)" $.component $name) }}
{{- end }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end -}}
