//! The `DaskCluster` custom resource (`daskrs.dev/v1alpha1`, short name
//! `dsk`). The Rust types are the source of the CRD: `crdgen` writes
//! `crds/daskcluster.yaml` from them, and a test fails when the two drift.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "daskrs.dev";

// CPU and memory in `resources` (what workers are sized by) are checked
// when the manifest is applied, as `kubectl apply` is where a typo should
// surface. Only those two keys: a rule over every key of a map without
// `maxProperties` costs more than the API server's CEL budget allows, so
// the operator checks the other keys before it makes any pod.
const QUANTITIES_IN_LIMITS: &str = "!has(self.limits) || ['cpu', 'memory'].all(k, !(k in self.limits) || type(self.limits[k]) == int || isQuantity(self.limits[k]))";
const QUANTITIES_IN_REQUESTS: &str = "!has(self.requests) || ['cpu', 'memory'].all(k, !(k in self.requests) || type(self.requests[k]) == int || isQuantity(self.requests[k]))";
const QUANTITIES_MESSAGE: &str =
    "cpu and memory must be Kubernetes quantities such as 500m, 2, 4Gi or 4G (4GB and 4Gb are not)";

/// A daskrs cluster: one scheduler and a set of workers.
// Each `printcolumn(...)` repeats the same keys, which the lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "daskrs.dev",
    version = "v1alpha1",
    kind = "DaskCluster",
    plural = "daskclusters",
    shortname = "dsk",
    namespaced,
    status = "DaskClusterStatus",
    derive = "PartialEq",
    doc = "A daskrs cluster: a scheduler Deployment and Service, and worker pods.",
    scale(
        spec_replicas_path = ".spec.worker.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Worker pods"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Worker pods that are ready"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Scheduler",
        type_ = "string",
        json_path = ".status.schedulerAddress"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DaskClusterSpec {
    /// The daskrs runtime image for the scheduler and the workers. Defaults
    /// to the operator's `--default-image` for the scheduler, and to its
    /// `--worker-image` (else `--default-image`) for the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the scheduler and worker containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    pub worker: WorkerSpec,
    /// Adaptive scaling between `minReplicas` and `maxReplicas`, following
    /// the worker count the scheduler asks for. While set, it decides the
    /// number of workers and `worker.replicas` is only the starting count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// S3 access of the scheduler (planning, listing) and the workers
    /// (reads and writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// Scale the workers to zero after the scheduler has had no work for
    /// this long, such as `30m` or `1h30m`. They come back when work arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub idle_timeout: Option<String>,
    /// TLS with mutual authentication between the scheduler, the workers
    /// and clients, with certificates of an authority the operator keeps
    /// for this cluster (in Secrets it owns, renewed before they expire),
    /// or of a cert-manager issuer (`issuerRef`). On unless `enabled: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

impl DaskClusterSpec {
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| t.enabled)
    }

    /// The cert-manager issuer of the cluster's certificates, if it names one.
    pub fn tls_issuer(&self) -> Option<&IssuerRef> {
        self.tls
            .as_ref()
            .filter(|t| t.enabled)
            .and_then(|t| t.issuer_ref.as_ref())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// TLS on the cluster's gRPC ports. Clients then need the cluster's
    /// client certificates, from the Secret `<name>-daskrs-client`.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// A cert-manager issuer to take the certificates from instead of an
    /// authority of the operator's: the operator asks for them with
    /// cert-manager `Certificate`s, which cert-manager issues and renews
    /// into the same Secrets. The issuer must put its own certificate in
    /// `ca.crt` (a `CA` or Vault issuer does; ACME issuers cannot serve
    /// mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer, as a `Certificate`'s `issuerRef` names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`; another
    /// kind where `group` names an external issuer. `Issuer` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The issuer's API group: `cert-manager.io` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// cert-manager's API group, of its `Certificate`s and its own issuers.
pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";

impl IssuerRef {
    /// The issuer's kind, `Issuer` when the spec leaves it out.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Issuer")
    }

    /// The issuer's API group, cert-manager's when the spec leaves it out.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(CERT_MANAGER_GROUP)
    }
}

fn enabled() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Pod settings that both the scheduler and the workers accept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels. The operator's own `daskrs.dev/*` labels win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra environment of the container. Credentials belong in a Secret:
    /// a literal value for `AWS_SECRET_ACCESS_KEY` or `AWS_SESSION_TOKEN` is
    /// rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// The pod's service account, such as one bound to an IAM role (IRSA or
    /// EKS Pod Identity) for S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Replaces the default pod security context, which meets the
    /// `restricted` Pod Security Standard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.env) || self.env.all(e, !(e.name in ['AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) || !has(e.value))").message("put AWS credentials in a Secret (spec.s3.credentialsSecret or env valueFrom.secretKeyRef), not in the manifest")
)]
pub struct SchedulerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(QUANTITIES_IN_LIMITS).field_path(".limits").message(QUANTITIES_MESSAGE),
        validation = Rule::new(QUANTITIES_IN_REQUESTS).field_path(".requests").message(QUANTITIES_MESSAGE)
    )]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(flatten)]
    pub pod: PodOverrides,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The scheduler Service's type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the scheduler Service, such as load balancer settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.env) || self.env.all(e, !(e.name in ['AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) || !has(e.value))").message("put AWS credentials in a Secret (spec.s3.credentialsSecret or env valueFrom.secretKeyRef), not in the manifest")
)]
pub struct WorkerSpec {
    /// Number of worker pods (the scale subresource's spec path).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    /// Task threads per worker. Defaults to the CPU limit (or request),
    /// rounded up, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<i32>,
    /// Memory the worker manages before spilling and pausing. Defaults to
    /// the memory limit (or request) of `resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int || isQuantity(self)").message("must be a Kubernetes quantity such as 4Gi or 4G (4GB and 4Gb are not)"))]
    pub memory_limit: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(QUANTITIES_IN_LIMITS).field_path(".limits").message(QUANTITIES_MESSAGE),
        validation = Rule::new(QUANTITIES_IN_REQUESTS).field_path(".requests").message(QUANTITIES_MESSAGE)
    )]
    pub resources: Option<ResourceRequirements>,
    #[serde(flatten)]
    pub pod: PodOverrides,
}

fn default_replicas() -> i32 {
    1
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
)]
pub struct AutoscalingSpec {
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Region of the buckets, such as `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, addressed path-style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Upper bound on concurrent requests per bucket and process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_concurrency: Option<i32>,
    /// Static credentials from a Secret. Without it, the pods use the AWS
    /// default chain: the service account's IAM role (IRSA or EKS Pod
    /// Identity), or the node's instance profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecret>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecret {
    /// Name of a Secret in the cluster's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_access_key_key")]
    pub access_key_id_key: String,
    #[serde(default = "default_secret_key_key")]
    pub secret_access_key_key: String,
    /// Key of an optional session token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_key: Option<String>,
}

fn default_access_key_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaskClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist and are not being deleted.
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods whose Ready condition is true.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The number of workers the operator is steering to.
    #[serde(default)]
    pub target_replicas: i32,
    /// Label selector of the worker pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Where clients and workers reach the scheduler (gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Scaling,
    Failed,
}

/// The CRD as YAML, as `crds/daskcluster.yaml` holds it.
pub fn crd_yaml() -> String {
    let crd = DaskCluster::crd();
    let body = serde_yaml::to_string(&crd).expect("a CRD always serialises");
    format!("# Generated by `cargo run -p daskrs-operator --bin crdgen`; do not edit.\n---\n{body}")
}
