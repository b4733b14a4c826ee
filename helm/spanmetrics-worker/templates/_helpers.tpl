{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "spanmetrics-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release name + chart name, unless the release name already contains the chart name.
*/}}
{{- define "spanmetrics-worker.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "spanmetrics-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels (Kubernetes recommended labels plus helm.sh/chart).
*/}}
{{- define "spanmetrics-worker.labels" -}}
helm.sh/chart: {{ include "spanmetrics-worker.chart" . }}
{{ include "spanmetrics-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: spanmetrics
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable across upgrades (never add the version here).
*/}}
{{- define "spanmetrics-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spanmetrics-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "spanmetrics-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spanmetrics-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest, or repository:tag (tag defaults to the appVersion).
*/}}
{{- define "spanmetrics-worker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The worker's configuration file, built from the values. The keys the chart manages (Kafka
connection, topics and group, Redis URL and prefix, shutdown grace, HTTP port) override the
same keys under .Values.config. Secrets never appear here: they come from env variables.
*/}}
{{- define "spanmetrics-worker.config" -}}
{{- $kafka := dict
    "bootstrap_servers" .Values.kafka.bootstrapServers
    "input_topic" .Values.kafka.inputTopic
    "output_topic" .Values.kafka.outputTopic
    "dlq_topic" .Values.kafka.dlqTopic
    "group_id" .Values.kafka.groupId
    "security_protocol" .Values.kafka.securityProtocol }}
{{- if .Values.kafka.sasl.mechanism }}
{{- $_ := set $kafka "sasl_mechanism" .Values.kafka.sasl.mechanism }}
{{- end }}
{{- if .Values.kafka.sasl.username }}
{{- $_ := set $kafka "sasl_username" .Values.kafka.sasl.username }}
{{- end }}
{{- $managed := dict
    "kafka" $kafka
    "redis" (dict "url" .Values.redis.url "key_prefix" .Values.redis.keyPrefix)
    "worker" (dict "shutdown_grace" (printf "%ds" (int .Values.worker.shutdownGraceSeconds)))
    "http" (dict "enabled" true "port" (int .Values.http.port)) }}
{{- $config := mustMergeOverwrite (deepCopy (.Values.config | default dict)) $managed }}
{{- toYaml $config }}
{{- end }}

{{/*
The Secret holding the Redis password: redis.existingSecret, or the chart-made one (redis.password).
Empty when there is no password.
*/}}
{{- define "spanmetrics-worker.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if .Values.redis.password }}
{{- printf "%s-redis" (include "spanmetrics-worker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "spanmetrics-worker.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else }}
{{- print "redis-password" }}
{{- end }}
{{- end }}

{{/*
Checks that a values schema cannot express; rendering fails with a message naming the values.
*/}}
{{- define "spanmetrics-worker.validate" -}}
{{- $partitions := int .Values.kafka.inputPartitions }}
{{- $keda := .Values.autoscaling.keda }}
{{- $hpa := .Values.autoscaling.hpa }}
{{- if and $keda.enabled $hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are mutually exclusive: both would drive the Deployment's replicas; enable one" }}
{{- end }}
{{- if $keda.enabled }}
{{- if gt (int $keda.maxReplicaCount) $partitions }}
{{- fail (printf "autoscaling.keda.maxReplicaCount (%d) exceeds kafka.inputPartitions (%d): a worker without an input partition only idles; lower maxReplicaCount or add partitions" (int $keda.maxReplicaCount) $partitions) }}
{{- end }}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) }}
{{- fail (printf "autoscaling.keda.minReplicaCount (%d) exceeds autoscaling.keda.maxReplicaCount (%d)" (int $keda.minReplicaCount) (int $keda.maxReplicaCount)) }}
{{- end }}
{{- end }}
{{- if $hpa.enabled }}
{{- if gt (int $hpa.maxReplicas) $partitions }}
{{- fail (printf "autoscaling.hpa.maxReplicas (%d) exceeds kafka.inputPartitions (%d): a worker without an input partition only idles; lower maxReplicas or add partitions" (int $hpa.maxReplicas) $partitions) }}
{{- end }}
{{- if gt (int $hpa.minReplicas) (int $hpa.maxReplicas) }}
{{- fail (printf "autoscaling.hpa.minReplicas (%d) exceeds autoscaling.hpa.maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- if and (not $hpa.targetCPUUtilizationPercentage) (not $hpa.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling.hpa needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- end }}
{{- if and (not $keda.enabled) (not $hpa.enabled) (gt (int .Values.replicaCount) $partitions) }}
{{- fail (printf "replicaCount (%d) exceeds kafka.inputPartitions (%d): a worker without an input partition only idles" (int .Values.replicaCount) $partitions) }}
{{- end }}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" .Values.redis.url }}
{{- fail "redis.url contains a password: it would land in the ConfigMap. Put the password in a Secret: redis.existingSecret (+ redis.existingSecretKey) or redis.password (the chart makes the Secret); the worker gets it as SPANMETRICS_REDIS__PASSWORD" }}
{{- end }}
{{- if and .Values.redis.password .Values.redis.existingSecret }}
{{- fail "redis.password and redis.existingSecret are both set: choose one (existingSecret names a Secret you manage; password makes one)" }}
{{- end }}
{{- if and $keda.enabled (ne $keda.offsetResetPolicy "earliest") }}
{{- fail (printf "autoscaling.keda.offsetResetPolicy %q disagrees with the worker, which starts from the earliest offset on a partition without a committed offset (its consumer's auto_offset_reset): set earliest, so that KEDA counts that backlog as lag" $keda.offsetResetPolicy) }}
{{- end }}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}
{{- if not (and .Values.kafka.sasl.mechanism .Values.kafka.sasl.username .Values.kafka.sasl.existingSecret) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism, kafka.sasl.username and kafka.sasl.existingSecret (the Secret holding the password)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- end }}
