{{/* The pod, in parts shared by the Deployment and a LeaderWorkerSet's leader and workers. */}}

{{/* Values that cannot work together fail the render instead of a pod that never serves. */}}
{{- define "lokal.checkParallel" -}}
{{- $par := .Values.vllm.parallel }}
{{- $split := or .Values.vllm.multiNode.enabled (gt (mul (int $par.tensor) (int $par.pipeline)) 1) }}
{{- if and $split (not .Values.gpu.enabled) }}
{{- fail "vllm.parallel (tensor x pipeline > 1) and vllm.multiNode need gpu.enabled" }}
{{- end }}
{{- if and $split (not (hasKey (.Values.model | default dict) "vllm")) }}
{{- fail "vllm.parallel and vllm.multiNode need a vLLM model (model.vllm)" }}
{{- end }}
{{- if and .Values.vllm.multiNode.enabled (gt (int $par.pipeline) 1) }}
{{- fail "vllm.multiNode sets pipeline parallelism to its nodes: leave vllm.parallel.pipeline at 1" }}
{{- end }}
{{- if and .Values.vllm.multiNode.enabled (eq .Values.backend "llamacpp") }}
{{- fail "vllm.multiNode runs vLLM: backend cannot be llamacpp" }}
{{- end }}
{{- end }}

{{- define "lokal.podLabels" -}}
{{ include "lokal.labels" . }}
{{- if .Values.inferencePool.enabled }}
# The llm-d router picks its metric names by this label: lokal publishes vLLM's.
llm-d.ai/engine-type: vllm
{{- end }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lokal.podAnnotations" -}}
# A changed model spec (or chart-made key) rolls the pods.
checksum/model: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) }}
checksum/api-key: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings: security, scheduling on GPU nodes, grace. */}}
{{- define "lokal.podSettings" -}}
{{- $gpu := .Values.gpu -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
# lokal's own grace for running streams, plus time for the preStop pause and engine stop.
terminationGracePeriodSeconds: {{ add .Values.server.shutdownGrace .Values.preStopSleepSeconds 15 }}
{{- if and $gpu.enabled $gpu.runtimeClassName }}
runtimeClassName: {{ $gpu.runtimeClassName }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := deepCopy .Values.affinity }}
{{- if and $gpu.enabled $gpu.products }}
{{- $match := dict "key" "nvidia.com/gpu.product" "operator" "In" "values" $gpu.products }}
{{- $terms := list (dict "matchExpressions" (list $match)) }}
{{- $_ := set $affinity "nodeAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" $terms)) }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := .Values.tolerations }}
{{- if $gpu.enabled }}
{{- $tolerations = concat $tolerations $gpu.tolerations }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: model-config
    configMap:
      name: {{ include "lokal.fullname" . }}-model
  - name: tmp
    emptyDir: {}
  {{- if $gpu.enabled }}
  # vLLM's workers (tensor parallel, Ray) share tensors through /dev/shm; the default
  # 64 MiB is too small.
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $gpu.shmSize }}
  {{- end }}
  {{- if .Values.storage.enabled }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ include "lokal.claimName" . }}
  {{- end }}
{{- end }}

{{/* `lokal serve` flags (after the image's entrypoint `lokal serve`). */}}
{{- define "lokal.serveArgs" -}}
- --config
- /etc/lokal/model.yaml
- --backend
- {{ ternary "vllm" .Values.backend .Values.vllm.multiNode.enabled | quote }}
- --port
- {{ int .Values.server.port | quote }}
{{- range .Values.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The server's environment: lokal's settings and the API key. */}}
{{- define "lokal.serverEnv" -}}
- name: LOKAL_HOST
  value: "0.0.0.0"
- name: LOKAL_LOG_FORMAT
  value: {{ .Values.server.logFormat | quote }}
- name: LOKAL_LOG_LEVEL
  value: {{ .Values.server.logLevel | quote }}
- name: LOKAL_REQUEST_TIMEOUT
  value: {{ .Values.server.requestTimeout | quote }}
- name: LOKAL_MAX_BODY_BYTES
  value: {{ .Values.server.maxBodyBytes | int64 | quote }}
- name: LOKAL_SHUTDOWN_GRACE
  value: {{ .Values.server.shutdownGrace | quote }}
- name: LOKAL_METRICS_OPEN
  value: {{ .Values.metrics.open | quote }}
{{- with .Values.server.corsOrigins }}
- name: LOKAL_CORS_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- if .Values.apiKey.enabled }}
- name: LOKAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "lokal.apiKeySecret" . }}
      key: {{ .Values.apiKey.secretKey }}
{{- end }}
{{- end }}

{{/* Environment every container gets: caches, NCCL, the user's extras (e.g. HF_TOKEN). */}}
{{- define "lokal.commonEnv" -}}
# The root filesystem is read-only: caches go to /tmp or the model volume.
- name: HOME
  value: /tmp
{{- if .Values.storage.enabled }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.storage.mountPath | quote }}
{{- end }}
{{- range $name, $value := .Values.vllm.nccl }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.server.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The serving container's port, probes and preStop pause. */}}
{{- define "lokal.serving" -}}
ports:
  - name: http
    containerPort: {{ int .Values.server.port }}
    protocol: TCP
# Loading can take minutes: the startup probe holds the other two back until the
# model is ready, so a pod that is only loading is never restarted.
startupProbe:
  httpGet:
    path: /health/ready
    port: http
  {{- toYaml .Values.probes.startup | nindent 2 }}
readinessProbe:
  httpGet:
    path: /health/ready
    port: http
  {{- toYaml .Values.probes.readiness | nindent 2 }}
livenessProbe:
  httpGet:
    path: /health/live
    port: http
  {{- toYaml .Values.probes.liveness | nindent 2 }}
{{- if gt (int .Values.preStopSleepSeconds) 0 }}
lifecycle:
  # Let endpoints and load balancers drop the pod before SIGTERM stops accepting.
  preStop:
    exec:
      command: ["sleep", {{ .Values.preStopSleepSeconds | quote }}]
{{- end }}
{{- end }}

{{/* Container resources (with the GPU limit), security context and mounts. */}}
{{- define "lokal.containerSettings" -}}
{{- $resources := deepCopy .Values.resources }}
{{- if .Values.gpu.enabled }}
{{- $limits := get $resources "limits" | default dict }}
{{- $_ := set $limits .Values.gpu.resourceName (int (include "lokal.gpuCount" .)) }}
{{- $_ := set $resources "limits" $limits }}
{{- end -}}
imagePullPolicy: {{ .Values.image.pullPolicy }}
resources:
  {{- toYaml $resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: model-config
    mountPath: /etc/lokal
    readOnly: true
  - name: tmp
    mountPath: /tmp
  {{- if .Values.gpu.enabled }}
  - name: dshm
    mountPath: /dev/shm
  {{- end }}
  {{- if .Values.storage.enabled }}
  - name: models
    mountPath: {{ .Values.storage.mountPath }}
  {{- end }}
{{- end }}
