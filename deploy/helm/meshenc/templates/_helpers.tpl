{{/* meshenc.name: the chart name, or nameOverride. */}}
{{- define "meshenc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* meshenc.fullname: the prefix of every resource name (the release name when it contains the chart name). */}}
{{- define "meshenc.fullname" -}}
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

{{/* meshenc.componentName: the name of one component's resources; call with (dict "context" $ "component" "encoder"). */}}
{{- define "meshenc.componentName" -}}
{{- printf "%s-%s" (include "meshenc.fullname" .context) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* meshenc.chart: chart name and version, for the helm.sh/chart label. */}}
{{- define "meshenc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* meshenc.selectorLabels: the labels that select one component's pods; call with (dict "context" $ "component" "encoder"). */}}
{{- define "meshenc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshenc.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* meshenc.labels: the Kubernetes recommended labels of one component's resources; call with (dict "context" $ "component" "encoder"). */}}
{{- define "meshenc.labels" -}}
{{ include "meshenc.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshenc
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
helm.sh/chart: {{ include "meshenc.chart" .context }}
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* meshenc.image: the meshenc image reference (tag defaults to the chart's appVersion). */}}
{{- define "meshenc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* meshenc.podDefaults: pull secrets and the pod security context every pod of the chart shares. */}}
{{- define "meshenc.podDefaults" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* meshenc.podAntiAffinity: affinity from a component's own value, else from its soft/hard anti-affinity preset; call with (dict "context" $ "component" "encoder" "values" .Values.encoder). */}}
{{- define "meshenc.podAntiAffinity" -}}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else if eq .values.podAntiAffinityPreset "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "meshenc.selectorLabels" . | nindent 12 }}
{{- else if eq .values.podAntiAffinityPreset "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "meshenc.selectorLabels" . | nindent 14 }}
{{- end }}
{{- end }}

{{/* meshenc.podScheduling: node selector, tolerations and affinity of one component; call like meshenc.podAntiAffinity. */}}
{{- define "meshenc.podScheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "meshenc.podAntiAffinity" . }}
{{- end }}

{{/* meshenc.metricsAnnotations: Prometheus scrape annotations of a meshenc pod, when metrics.scrapeAnnotations is on. */}}
{{- define "meshenc.metricsAnnotations" -}}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* meshenc.headlessHost: the stable DNS name of one pod of a StatefulSet; call with (dict "context" $ "component" "encoder" "pod" "meshenc-encoder-0"). */}}
{{- define "meshenc.headlessHost" -}}
{{- printf "%s.%s.%s.svc.%s" .pod (include "meshenc.componentName" .) .context.Release.Namespace .context.Values.clusterDomain }}
{{- end }}

{{/* meshenc.statefulSetAddresses: comma-separated HOST:PORT of every replica of a StatefulSet; call with (dict "context" $ "component" "registry" "replicas" 3 "port" 7500). */}}
{{- define "meshenc.statefulSetAddresses" -}}
{{- $addresses := list }}
{{- range $index := until (int .replicas) }}
{{- $pod := printf "%s-%d" (include "meshenc.componentName" $) $index }}
{{- $host := include "meshenc.headlessHost" (dict "context" $.context "component" $.component "pod" $pod) }}
{{- $addresses = append $addresses (printf "%s:%d" $host (int $.port)) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/* meshenc.registryAddresses: the stable addresses of every registry replica (MESHENC_REGISTRY, MESHENC_SEEDS). */}}
{{- define "meshenc.registryAddresses" -}}
{{- include "meshenc.statefulSetAddresses" (dict "context" . "component" "registry" "replicas" .Values.registry.replicaCount "port" .Values.registry.port) }}
{{- end }}

{{/* meshenc.managerAddress: the manager Service's address (MESHENC_MANAGER). */}}
{{- define "meshenc.managerAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "meshenc.componentName" (dict "context" . "component" "manager")) .Release.Namespace .Values.clusterDomain (int .Values.manager.port) }}
{{- end }}

{{/* meshenc.etcdEndpoints: comma-separated etcd client URLs, bundled or external (MESHENC_ETCD_ENDPOINTS). */}}
{{- define "meshenc.etcdEndpoints" -}}
{{- if .Values.etcd.bundled }}
{{- printf "http://%s.%s.svc.%s:2379" (include "meshenc.componentName" (dict "context" . "component" "etcd-client")) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/* meshenc.etcdTlsEnabled: "true" when the services connect to etcd with TLS client certificates. */}}
{{- define "meshenc.etcdTlsEnabled" -}}
{{- if and (not .Values.etcd.bundled) .Values.etcd.external.tls.enabled }}true{{ end }}
{{- end }}

{{/* meshenc.etcdEnv: the etcd variables of a service that uses etcd (endpoints, prefix, TLS files). */}}
{{- define "meshenc.etcdEnv" -}}
- name: MESHENC_ETCD_ENDPOINTS
  value: {{ include "meshenc.etcdEndpoints" . | quote }}
- name: MESHENC_ETCD_PREFIX
  value: {{ .Values.etcd.prefix | quote }}
{{- if include "meshenc.etcdTlsEnabled" . }}
- name: MESHENC_ETCD_CA
  value: /etc/meshenc/etcd-tls/ca.crt
- name: MESHENC_ETCD_CERT
  value: /etc/meshenc/etcd-tls/tls.crt
- name: MESHENC_ETCD_KEY
  value: /etc/meshenc/etcd-tls/tls.key
{{- end }}
{{- end }}

{{/* meshenc.etcdTlsVolumeMount: the mount of the etcd client certificates, when TLS is on. */}}
{{- define "meshenc.etcdTlsVolumeMount" -}}
{{- if include "meshenc.etcdTlsEnabled" . }}
- name: etcd-tls
  mountPath: /etc/meshenc/etcd-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* meshenc.etcdTlsVolume: the Secret volume of the etcd client certificates, when TLS is on. */}}
{{- define "meshenc.etcdTlsVolume" -}}
{{- if include "meshenc.etcdTlsEnabled" . }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.external.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* meshenc.otlpEndpoint: where traces go: tracing.otlpEndpoint, else the bundled Jaeger. */}}
{{- define "meshenc.otlpEndpoint" -}}
{{- if .Values.tracing.otlpEndpoint }}
{{- .Values.tracing.otlpEndpoint }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:4317" (include "meshenc.componentName" (dict "context" . "component" "jaeger")) .Release.Namespace .Values.clusterDomain }}
{{- end }}
{{- end }}

{{/* meshenc.observabilityEnv: the metrics listener and the standard OTEL_* variables of one component; call with (dict "context" $ "component" "encoder"). */}}
{{- define "meshenc.observabilityEnv" -}}
- name: MESHENC_METRICS_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .context.Values.metrics.port) | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "meshenc-%s" .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,k8s.namespace.name=%s" .context.Release.Name .context.Release.Namespace | quote }}
{{- if .context.Values.tracing.enabled }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ include "meshenc.otlpEndpoint" .context | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
- name: OTEL_METRICS_EXPORTER
  value: none
- name: OTEL_LOGS_EXPORTER
  value: none
{{- end }}

{{/* meshenc.tlsFileNames: the names of a service's CA, certificate and key in its TLS volume, as YAML (ca, cert, key): NAME.crt/NAME.key from tls.existingSecret, or the csi-driver's tls.crt/tls.key with tls.certManager.enabled; call with (dict "context" $ "identity" "registry"). */}}
{{- define "meshenc.tlsFileNames" -}}
ca: ca.crt
{{- if .context.Values.tls.certManager.enabled }}
cert: tls.crt
key: tls.key
{{- else }}
cert: {{ printf "%s.crt" .identity | quote }}
key: {{ printf "%s.key" .identity | quote }}
{{- end }}
{{- end }}

{{/* meshenc.serviceTlsEnv: a meshenc service's TLS variables (its CA, certificate and key in the mounted volume, or MESHENC_INSECURE) and its plaintext health-only port; call with (dict "context" $ "identity" "registry"); the identity may be a $(VAR) the kubelet expands. */}}
{{- define "meshenc.serviceTlsEnv" -}}
- name: MESHENC_HEALTH_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .context.Values.health.port) | quote }}
{{- if .context.Values.tls.enabled }}
{{- $files := include "meshenc.tlsFileNames" . | fromYaml }}
- name: MESHENC_TLS_CA
  value: {{ printf "/etc/meshenc/tls/%s" $files.ca | quote }}
- name: MESHENC_TLS_CERT
  value: {{ printf "/etc/meshenc/tls/%s" $files.cert | quote }}
- name: MESHENC_TLS_KEY
  value: {{ printf "/etc/meshenc/tls/%s" $files.key | quote }}
{{- else }}
- name: MESHENC_INSECURE
  value: "true"
{{- end }}
{{- end }}

{{/* meshenc.peerLimitEnv: a component's per-peer limits, only those set (else the service's defaults; a whole number of messages rendered as one); call with $component (its "values"). */}}
{{- define "meshenc.peerLimitEnv" -}}
{{- $streams := .values.maxStreamsPerPeer }}
{{- $messages := .values.maxMessagesPerPeer }}
{{- if not (kindIs "invalid" $streams) }}
- name: MESHENC_MAX_STREAMS_PER_PEER
  value: {{ int64 $streams | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $messages) }}
- name: MESHENC_MAX_MESSAGES_PER_PEER
  value: {{ ternary (int64 $messages) $messages (eq (float64 (int64 $messages)) (float64 $messages)) | toString | quote }}
{{- end }}
{{- end }}

{{/* meshenc.tlsVolumeMount: the mount of the services' certificates, when tls.enabled. */}}
{{- define "meshenc.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/meshenc/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* meshenc.certManagerFsGroup: the group the csi-driver gives the certificate files (readable by it alone): podSecurityContext.fsGroup, else runAsGroup; empty when neither is set. */}}
{{- define "meshenc.certManagerFsGroup" -}}
{{- $pod := .Values.podSecurityContext }}
{{- with (default $pod.runAsGroup $pod.fsGroup) }}{{ int64 . }}{{ end }}
{{- end }}

{{/* meshenc.durationSeconds: a Go duration such as 2h30m (what the schema lets through) in seconds, to compare two of them. */}}
{{- define "meshenc.durationSeconds" -}}
{{- $scale := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "ns" 0.000000001 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" . -1 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $total = addf $total (mulf (float64 $number) (get $scale (trimPrefix $number .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* meshenc.tlsVolume: the services' certificates when tls.enabled: the Secret tls.existingSecret (ca.crt, NAME.crt, NAME.key), readable by the pod's group only, or with tls.certManager.enabled an inline volume of cert-manager's csi-driver that asks the issuer for this pod's own certificate naming its identity (URI meshenc://NAME, DNS NAME, common name NAME) and renews it in place; call with (dict "context" $ "identity" "registry" "hostname" "<the pod's DNS name>"), where both may use the driver's ${POD_NAME} and ${POD_NAMESPACE}. */}}
{{- define "meshenc.tlsVolume" -}}
{{- $tls := .context.Values.tls }}
{{- if $tls.enabled }}
- name: tls
{{- if $tls.certManager.enabled }}
{{- $certManager := $tls.certManager }}
{{- $files := include "meshenc.tlsFileNames" . | fromYaml }}
{{- $usages := list "digital signature" }}
{{- if eq $certManager.keyAlgorithm "RSA" }}
{{- $usages = append $usages "key encipherment" }}
{{- end }}
{{- $usages = concat $usages (list "server auth" "client auth") }}
  csi:
    driver: csi.cert-manager.io
    readOnly: true
    volumeAttributes:
      csi.cert-manager.io/issuer-name: {{ $certManager.issuerRef.name | quote }}
      csi.cert-manager.io/issuer-kind: {{ $certManager.issuerRef.kind | quote }}
      csi.cert-manager.io/issuer-group: {{ $certManager.issuerRef.group | quote }}
      csi.cert-manager.io/common-name: {{ .identity | quote }}
      csi.cert-manager.io/uri-sans: {{ printf "meshenc://%s" .identity | quote }}
      {{- /* localhost and the loopback addresses, as `meshenc certs` gives: port-forwarded tools check the server against them. */}}
      csi.cert-manager.io/dns-names: {{ join "," (list .identity .hostname "localhost") | quote }}
      csi.cert-manager.io/ip-sans: "127.0.0.1,::1"
      csi.cert-manager.io/key-usages: {{ join "," $usages | quote }}
      csi.cert-manager.io/key-algorithm: {{ $certManager.keyAlgorithm | quote }}
      {{- if not (kindIs "invalid" $certManager.keySize) }}
      csi.cert-manager.io/key-size: {{ int64 $certManager.keySize | toString | quote }}
      {{- end }}
      csi.cert-manager.io/duration: {{ $certManager.duration | quote }}
      {{- with $certManager.renewBefore }}
      csi.cert-manager.io/renew-before: {{ . | quote }}
      {{- end }}
      csi.cert-manager.io/ca-file: {{ $files.ca | quote }}
      csi.cert-manager.io/certificate-file: {{ $files.cert | quote }}
      csi.cert-manager.io/privatekey-file: {{ $files.key | quote }}
      csi.cert-manager.io/fs-group: {{ include "meshenc.certManagerFsGroup" .context | quote }}
{{- else }}
  secret:
    secretName: {{ $tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* meshenc.healthPort: the container port of the plaintext health-only server. */}}
{{- define "meshenc.healthPort" -}}
- name: health
  containerPort: {{ .Values.health.port }}
  protocol: TCP
{{- end }}

{{/* meshenc.grpcProbes: startup, liveness (whole server) and readiness (the component's service) probes over native gRPC health on the plaintext health-only port (the kubelet cannot present a client certificate); call with (dict "port" 7700 "service" "meshenc.v1.EncoderMesh"). */}}
{{- define "meshenc.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ int .port }}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  grpc:
    port: {{ int .port }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  grpc:
    port: {{ int .port }}
    service: {{ .service }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* meshenc.tmpVolumeMount: the writable /tmp every container gets, its root filesystem being read-only. */}}
{{- define "meshenc.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* meshenc.tmpVolume: the small emptyDir behind /tmp. */}}
{{- define "meshenc.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* meshenc.frameBudget: one frame interval of encoder.fps in seconds (30000/1001 → 0.033367), what the manager reads encode times against (MESHENC_FRAME_BUDGET). */}}
{{- define "meshenc.frameBudget" -}}
{{- $rate := splitList "/" (toString .Values.encoder.fps) }}
{{- $per := "1" }}
{{- if eq (len $rate) 2 }}
{{- $per = index $rate 1 }}
{{- end }}
{{- printf "%.6f" (divf (float64 $per) (float64 (index $rate 0))) }}
{{- end }}

{{/* meshenc.workUnits: the units the manager places (MESHENC_WORK_UNITS): each rung of work.ladder for each channel, CHANNEL/RUNG with the channel's name (one channel, 0, when work.channels is empty: encoder.source); empty without a ladder. */}}
{{- define "meshenc.workUnits" -}}
{{- $units := list }}
{{- $names := list "0" }}
{{- if .Values.work.channels }}
{{- $names = list }}
{{- range .Values.work.channels }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- range $name := $names }}
{{- range $.Values.work.ladder }}
{{- $units = append $units (printf "%s/%s" $name (first (splitList "@" .))) }}
{{- end }}
{{- end }}
{{- join "," $units }}
{{- end }}

{{/* meshenc.channels: work.channels as MESHENC_CHANNELS reads them, NAME=URL separated by spaces, in the order given. */}}
{{- define "meshenc.channels" -}}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (printf "%s=%s" .name .source) }}
{{- end }}
{{- join " " $items }}
{{- end }}

{{/* meshenc.workProblems: what is wrong with the work values, one line each ("" when nothing), for meshenc.validateValues. */}}
{{- define "meshenc.workProblems" -}}
{{- $work := .Values.work }}
{{- if and $work.channels .Values.encoder.source }}
- encoder.source: leave it empty when work.channels names the channel's source
{{- end }}
{{- $names := list }}
{{- range $work.channels }}
{{- if has .name $names }}
- work.channels: the name {{ .name }} is given twice
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- $sizes := list }}
{{- range $work.ladder }}
{{- $rung := . }}
{{- $size := first (splitList "@" .) }}
{{- $kbps := int (last (splitList "@" .)) }}
{{- $width := int (first (splitList "x" $size)) }}
{{- $height := int (last (splitList "x" $size)) }}
{{- if or (lt $width 16) (gt $width 3840) (lt $height 16) (gt $height 2160) (mod $width 2) (mod $height 2) }}
- work.ladder: rung {{ $rung }} needs an even width in 16..3840 and an even height in 16..2160
{{- end }}
{{- if or (lt $kbps 16) (gt $kbps 200000) }}
- work.ladder: rung {{ $rung }} needs a bitrate of 16..200000 kbit/s
{{- end }}
{{- if has $size $sizes }}
- work.ladder: the ladder already has a {{ $size }} rung ({{ $rung }})
{{- end }}
{{- $sizes = append $sizes $size }}
{{- end }}
{{- if and $work.ladder (gt (int $work.redundancy) (int .Values.encoder.replicaCount)) }}
- work.redundancy ({{ $work.redundancy }}) must not exceed encoder.replicaCount ({{ .Values.encoder.replicaCount }}): each work unit runs on that many encoders
{{- end }}
{{- end }}

{{/* meshenc.validateValues: fails the render with one clear message per inconsistent combination of values. */}}
{{- define "meshenc.validateValues" -}}
{{- $problems := list }}
{{- if and (not .Values.etcd.bundled) (empty .Values.etcd.external.endpoints) }}
{{- $problems = append $problems "etcd.external.endpoints: give at least one client URL when etcd.bundled is false" }}
{{- end }}
{{- if and .Values.etcd.bundled (not (empty .Values.etcd.external.endpoints)) }}
{{- $problems = append $problems "etcd.external.endpoints: set etcd.bundled=false to use external endpoints (both are set)" }}
{{- end }}
{{- if and .Values.etcd.bundled .Values.etcd.external.tls.enabled }}
{{- $problems = append $problems "etcd.external.tls.enabled: TLS applies to external etcd; set etcd.bundled=false and etcd.external.endpoints" }}
{{- end }}
{{- if and .Values.etcd.external.tls.enabled (not .Values.etcd.external.tls.existingSecret) }}
{{- $problems = append $problems "etcd.external.tls.existingSecret: name the Secret holding ca.crt, tls.crt and tls.key when etcd.external.tls.enabled is true" }}
{{- end }}
{{- if .Values.etcd.external.tls.enabled }}
{{- range .Values.etcd.external.endpoints }}
{{- if not (hasPrefix "https://" .) }}
{{- $problems = append $problems (printf "etcd.external.endpoints: %s must be https:// when etcd.external.tls.enabled is true" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- $problems = append $problems (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (ge (float64 .Values.autoscaling.lowWater) (float64 .Values.autoscaling.highWater)) }}
{{- $problems = append $problems (printf "autoscaling.lowWater (%v) must be below autoscaling.highWater (%v)" .Values.autoscaling.lowWater .Values.autoscaling.highWater) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (le (float64 .Values.autoscaling.drainTimeoutSeconds) (float64 .Values.autoscaling.drainGraceSeconds)) }}
{{- $problems = append $problems (printf "autoscaling.drainTimeoutSeconds (%v) must be longer than autoscaling.drainGraceSeconds (%v)" .Values.autoscaling.drainTimeoutSeconds .Values.autoscaling.drainGraceSeconds) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (or (lt (int .Values.encoder.replicaCount) (int .Values.autoscaling.minReplicas)) (gt (int .Values.encoder.replicaCount) (int .Values.autoscaling.maxReplicas))) }}
{{- $problems = append $problems (printf "encoder.replicaCount (%d) must lie within autoscaling.minReplicas..maxReplicas (%d..%d)" (int .Values.encoder.replicaCount) (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.tracing.enabled (not .Values.tracing.otlpEndpoint) (not .Values.jaeger.enabled) }}
{{- $problems = append $problems "tracing.enabled: set tracing.otlpEndpoint or jaeger.enabled=true, so that traces have somewhere to go" }}
{{- end }}
{{- $certManager := .Values.tls.certManager }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not $certManager.enabled) }}
{{- $problems = append $problems "tls.existingSecret: name the Secret holding ca.crt and NAME.crt/NAME.key per identity when tls.enabled is true, or set tls.certManager.enabled=true to have cert-manager issue them" }}
{{- end }}
{{- if and .Values.tls.existingSecret $certManager.enabled }}
{{- $problems = append $problems (printf "tls.existingSecret (%s) and tls.certManager.enabled: the certificates come from the Secret or from cert-manager, not both; leave one out" .Values.tls.existingSecret) }}
{{- end }}
{{- if and $certManager.enabled (not .Values.tls.enabled) }}
{{- $problems = append $problems "tls.certManager.enabled: set tls.enabled=true too; without it the services run in plaintext and use no certificate" }}
{{- end }}
{{- if and $certManager.enabled (not $certManager.issuerRef.name) }}
{{- $problems = append $problems "tls.certManager.issuerRef.name: name the Issuer or ClusterIssuer that signs the services' certificates; the chart creates none (docs/kubernetes.md)" }}
{{- end }}
{{- if and $certManager.enabled (not (include "meshenc.certManagerFsGroup" .)) }}
{{- $problems = append $problems "tls.certManager.enabled: set podSecurityContext.fsGroup or runAsGroup; the csi-driver makes the certificate files readable by that group alone" }}
{{- end }}
{{- if and $certManager.renewBefore (ge (float64 (include "meshenc.durationSeconds" $certManager.renewBefore)) (float64 (include "meshenc.durationSeconds" $certManager.duration))) }}
{{- $problems = append $problems (printf "tls.certManager.renewBefore (%s) must be shorter than tls.certManager.duration (%s), or the csi-driver renews without end" $certManager.renewBefore $certManager.duration) }}
{{- end }}
{{- if not (kindIs "invalid" $certManager.keySize) }}
{{- $size := int64 $certManager.keySize }}
{{- if and (eq $certManager.keyAlgorithm "ECDSA") (not (has $size (list (int64 256) (int64 384) (int64 521)))) }}
{{- $problems = append $problems (printf "tls.certManager.keySize (%d) must be 256, 384 or 521 for ECDSA keys" $size) }}
{{- end }}
{{- if and (eq $certManager.keyAlgorithm "RSA") (or (lt $size (int64 2048)) (gt $size (int64 8192))) }}
{{- $problems = append $problems (printf "tls.certManager.keySize (%d) must be 2048 to 8192 for RSA keys" $size) }}
{{- end }}
{{- end }}
{{- if has (int .Values.health.port) (list (int .Values.encoder.port) (int .Values.registry.port) (int .Values.manager.port) (int .Values.metrics.port)) }}
{{- $problems = append $problems (printf "health.port (%d) must differ from encoder.port, registry.port, manager.port and metrics.port, which share a pod with it" (int .Values.health.port)) }}
{{- end }}
{{- if has (int .Values.metrics.port) (list (int .Values.encoder.port) (int .Values.registry.port) (int .Values.manager.port)) }}
{{- $problems = append $problems (printf "metrics.port (%d) must differ from encoder.port, registry.port and manager.port, which share a pod with it" (int .Values.metrics.port)) }}
{{- end }}
{{- range splitList "\n" (include "meshenc.workProblems" . | trim) }}
{{- if . }}
{{- $problems = append $problems (trimPrefix "- " .) }}
{{- end }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\nmeshenc: invalid values:\n  - %s\n" (join "\n  - " $problems)) }}
{{- end }}
{{- end }}
