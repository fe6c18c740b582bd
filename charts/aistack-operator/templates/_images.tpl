{{/* Written by `make chart-images` from the component registry (operator/aistack/components.py): do not edit. */}}

{{- /* The operator's --<key>-image argument for each images.<key> that is set. */}}
{{- define "aistack-operator.imageArgs" -}}
{{- with .Values.images.vllm }}
- --vllm-image={{ . }}
{{- end }}
{{- with .Values.images.ray }}
- --ray-image={{ . }}
{{- end }}
{{- with .Values.images.mlflow }}
- --mlflow-image={{ . }}
{{- end }}
{{- with .Values.images.gateway }}
- --gateway-image={{ . }}
{{- end }}
{{- with .Values.images.ollama }}
- --ollama-image={{ . }}
{{- end }}
{{- end }}
