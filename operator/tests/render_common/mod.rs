//! Shared inputs of the render tests: the named cases the goldens and property tests use.

#![allow(dead_code)]

use rudder_operator::manifest::Manifest;
use rudder_operator::render::{InputFile, RenderRequest, render};

#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    pub files: &'static [&'static str],
    pub set: &'static [&'static str],
    pub revision: Option<&'static str>,
}

pub const CASES: &[Case] = &[
    Case { name: "default", files: &[], set: &[], revision: None },
    Case { name: "demo", files: &[], set: &["profile=demo"], revision: None },
    Case { name: "minimal", files: &[], set: &["profile=minimal"], revision: None },
    Case { name: "empty", files: &[], set: &["profile=empty"], revision: None },
    Case { name: "canary", files: &[], set: &[], revision: Some("canary") },
    Case { name: "two-ingress-gateways", files: &[TWO_GATEWAYS], set: &[], revision: None },
    Case { name: "k8s-overlays", files: &[K8S_OVERLAYS], set: &[], revision: None },
    Case {
        name: "set-overrides",
        files: &[NAMED],
        set: &[
            "values.global.hub=registry.example/mesh",
            "tag=1.2.3",
            "meshConfig.accessLogFile=/dev/stdout",
            "components.egressGateways[0].enabled=true",
            "components.ingressGateways[name:istio-ingressgateway].k8s.replicaCount=2",
            "values.gateways.istio-ingressgateway.autoscaleEnabled=false",
            "values.sidecarInjectorWebhook.enableNamespacesByDefault=true",
            "values.global.logging.level=default:debug",
        ],
        revision: None,
    },
    Case {
        name: "injection-url",
        files: &[],
        set: &["profile=remote", "values.istiodRemote.injectionURL=https://istiod.example.com:15017/inject"],
        revision: None,
    },
];

const NAMED: &str = "
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: control-plane
  namespace: istio-system
";

const TWO_GATEWAYS: &str = "
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: gateways
spec:
  components:
    ingressGateways:
      - name: istio-ingressgateway
      - name: internal-gateway
        namespace: internal
        label:
          istio: internal-gateway
        k8s:
          service:
            type: ClusterIP
";

const K8S_OVERLAYS: &str = r#"
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  components:
    pilot:
      k8s:
        replicaCount: 3
        hpaSpec:
          minReplicas: 3
          maxReplicas: 7
        resources:
          requests: {cpu: 250m, memory: 512Mi}
          limits: {cpu: "1", memory: 1Gi}
        env:
          - {name: PILOT_PUSH_THROTTLE, value: "50"}
          - {name: REVISION, value: overridden}
        nodeSelector: {kubernetes.io/os: linux}
        tolerations:
          - {key: dedicated, operator: Equal, value: mesh, effect: NoSchedule}
        affinity:
          podAntiAffinity:
            preferredDuringSchedulingIgnoredDuringExecution:
              - weight: 100
                podAffinityTerm:
                  topologyKey: kubernetes.io/hostname
                  labelSelector: {matchLabels: {app: istiod}}
        priorityClassName: system-cluster-critical
        podAnnotations: {example.com/team: mesh}
        serviceAnnotations: {example.com/owner: platform}
        imagePullPolicy: Always
        strategy:
          rollingUpdate: {maxSurge: 100%, maxUnavailable: 25%}
        podDisruptionBudget:
          maxUnavailable: 1
        service:
          ports:
            - {name: http-monitoring, port: 15014, targetPort: 15014, appProtocol: http}
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
          periodSeconds: 10
        securityContext: {runAsNonRoot: true}
        overlays:
          - kind: Deployment
            name: istiod
            patches:
              - path: spec.template.spec.containers.[name:discovery].args
                value: [discovery, --log_output_level=default:debug]
              - path: metadata.labels.app\.kubernetes\.io/name
          - kind: Service
            name: istiod
            patches:
              - path: spec.ports.[name:grpc-xds]
    ingressGateways:
      - name: istio-ingressgateway
        k8s:
          hpaSpec: {maxReplicas: 10}
          service:
            type: NodePort
            ports:
              - {name: http2, port: 80, targetPort: 8080, nodePort: 30080}
"#;

pub fn request(case: &Case) -> RenderRequest {
    let files = case
        .files
        .iter()
        .enumerate()
        .map(|(i, text)| InputFile {
            name: format!("{}-{i}.yaml", case.name),
            value: serde_saphyr::from_str(text).expect("test input is YAML"),
        })
        .collect();
    RenderRequest {
        files,
        set: case.set.iter().map(|s| (*s).to_owned()).collect(),
        revision: case.revision.map(str::to_owned),
        ..RenderRequest::default()
    }
}

pub fn render_case(case: &Case) -> Manifest {
    render(&request(case)).unwrap_or_else(|e| panic!("{}: {e}", case.name))
}
