//! The cluster's TLS Secrets, all owned by the cluster (so deleted with it):
//!
//! - `<name>-daskrs-ca`: the cluster's certificate authority (`ca.crt`,
//!   `ca.key`), made once; only the operator reads it.
//! - `<name>-daskrs-tls`: the certificate of the scheduler and the workers,
//!   mounted into their pods at [`TLS_DIR`].
//! - `<name>-daskrs-client`: a client certificate, for users (`kubectl get
//!   secret` it into a directory for `--tls-dir`).
//!
//! When the spec names a cert-manager issuer, the operator makes no
//! authority: it asks for the same two certificates with cert-manager
//! `Certificate`s ([`cert_manager_certificates`]), owned by the cluster, and
//! cert-manager issues and renews them into the same Secrets.
//!
//! The two certificates are Secrets of type `kubernetes.io/tls` (`tls.crt`,
//! `tls.key`, and `ca.crt`) whose annotation [`NOT_AFTER`] says when they
//! expire. The operator issues them anew, in the same Secrets, once a third
//! of their life is left: the kubelet updates the mounted files, and the
//! scheduler and workers use them for new connections without a restart,
//! so no result is lost.

use std::collections::BTreeMap;
use std::time::SystemTime;

use daskrs_core::certs::{Authority, CERT_DAYS, Issued, SERVER_NAME, due_for_renewal};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGER, owned_meta, scheduler_name};
use crate::crd::{CERT_MANAGER_GROUP, DaskCluster, IssuerRef};

/// Where the scheduler and worker pods find their TLS files.
pub const TLS_DIR: &str = "/etc/daskrs/tls";
const TLS_VOLUME: &str = "tls";
/// The annotation of a certificate's Secret: when it expires, in seconds
/// since the Unix epoch.
pub const NOT_AFTER: &str = "daskrs.dev/not-after";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

pub fn ca_secret_name(cluster: &DaskCluster) -> String {
    format!("{}-daskrs-ca", cluster.name_any())
}

/// The Secret of the scheduler's and workers' certificate.
pub fn tls_secret_name(cluster: &DaskCluster) -> String {
    format!("{}-daskrs-tls", cluster.name_any())
}

/// The Secret of the client certificate users connect with.
pub fn client_secret_name(cluster: &DaskCluster) -> String {
    format!("{}-daskrs-client", cluster.name_any())
}

/// The cluster's name as its certificates show it.
fn shown_name(cluster: &DaskCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

fn labels(cluster: &DaskCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_string(), cluster.name_any()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ])
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

/// A new authority for the cluster.
pub fn new_authority(cluster: &DaskCluster) -> Result<Authority, daskrs_core::certs::CertError> {
    Authority::generate(&shown_name(cluster))
}

pub fn ca_secret(cluster: &DaskCluster, ca: &Authority) -> Secret {
    Secret {
        metadata: owned_meta(cluster, ca_secret_name(cluster), labels(cluster)),
        type_: Some("Opaque".into()),
        // An authority changes only by a new Secret: the certificates it
        // issued would no longer be trusted.
        immutable: Some(true),
        data: Some(BTreeMap::from([
            (CA_CERT.to_string(), bytes(&ca.cert_pem)),
            (CA_KEY.to_string(), bytes(&ca.key_pem())),
        ])),
        ..Secret::default()
    }
}

/// The authority a Secret holds, if it holds a usable one.
pub fn authority_of(secret: &Secret, cluster: &DaskCluster) -> Option<Authority> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        std::str::from_utf8(&data.get(k)?.0)
            .ok()
            .map(str::to_string)
    };
    Authority::from_pem(&shown_name(cluster), &text(CA_CERT)?, &text(CA_KEY)?).ok()
}

/// A certificate's Secret named `name`.
pub fn certificate_secret(
    cluster: &DaskCluster,
    name: String,
    ca: &Authority,
    issued: &Issued,
) -> Secret {
    let mut metadata = owned_meta(cluster, name, labels(cluster));
    metadata.annotations = Some(BTreeMap::from([(
        NOT_AFTER.to_string(),
        issued.not_after.to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (CA_CERT.to_string(), bytes(&ca.cert_pem)),
            (TLS_CERT.to_string(), bytes(&issued.cert_pem)),
            (TLS_KEY.to_string(), bytes(&issued.key_pem)),
        ])),
        ..Secret::default()
    }
}

/// When the certificate of a Secret made by [`certificate_secret`] expires.
pub fn not_after_of(secret: &Secret) -> Option<u64> {
    secret.annotations().get(NOT_AFTER)?.parse().ok()
}

/// Whether a certificate's Secret must be issued (anew): it is missing,
/// holds no certificate of `ca`, says no expiry, or is due for renewal.
pub fn needs_issue(secret: Option<&Secret>, ca: &Authority, now: SystemTime) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    let data = secret.data.as_ref();
    let has = |k: &str| data.and_then(|d| d.get(k)).is_some_and(|v| !v.0.is_empty());
    let same_ca = data
        .and_then(|d| d.get(CA_CERT))
        .is_some_and(|v| v.0 == ca.cert_pem.as_bytes());
    match not_after_of(secret) {
        Some(not_after) => {
            !same_ca
                || !has(TLS_CERT)
                || !has(TLS_KEY)
                || due_for_renewal(not_after, CERT_DAYS, now)
        }
        None => true,
    }
}

/// The annotation cert-manager puts on a Secret it issues into: the name
/// of the `Certificate` that asked for it.
pub const CERTIFICATE_NAME: &str = "cert-manager.io/certificate-name";

/// cert-manager's `Certificate` kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        CERT_MANAGER_GROUP,
        "v1",
        "Certificate",
    ))
}

/// The cert-manager `Certificate`s of a cluster whose spec names `issuer`,
/// each named as the Secret it fills: what the operator's own authority
/// would issue there (the name every peer checks, for servers and clients,
/// valid for [`CERT_DAYS`] and renewed with a third of that left, a new
/// key each time).
pub fn cert_manager_certificates(cluster: &DaskCluster, issuer: &IssuerRef) -> Vec<DynamicObject> {
    let resource = certificate_resource();
    let hours = u64::from(CERT_DAYS) * 24;
    [
        (tls_secret_name(cluster), scheduler_names(cluster)),
        (client_secret_name(cluster), Vec::new()),
    ]
    .into_iter()
    .map(|(name, extra)| {
        let (ips, dns): (Vec<String>, Vec<String>) = extra
            .into_iter()
            .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
        let dns: Vec<String> = std::iter::once(SERVER_NAME.to_string())
            .chain(dns)
            .collect();
        let mut spec = serde_json::json!({
            "secretName": name,
            "secretTemplate": {"labels": labels(cluster)},
            "dnsNames": dns,
            "duration": format!("{hours}h0m0s"),
            "renewBefore": format!("{}h0m0s", hours / 3),
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": {
                "algorithm": "ECDSA",
                "size": 256,
                "encoding": "PKCS8",
                "rotationPolicy": "Always",
            },
            "issuerRef": {
                "name": issuer.name,
                "kind": issuer.kind(),
                "group": issuer.group(),
            },
        });
        if !ips.is_empty() {
            spec["ipAddresses"] = serde_json::json!(ips);
        }
        let mut object =
            DynamicObject::new(&name, &resource).data(serde_json::json!({ "spec": spec }));
        object.metadata = owned_meta(cluster, name, labels(cluster));
        object
    })
    .collect()
}

/// Whether cert-manager issued `secret` for the `Certificate` named `name`.
pub fn issued_by_cert_manager(secret: &Secret, name: &str) -> bool {
    secret
        .annotations()
        .get(CERTIFICATE_NAME)
        .is_some_and(|n| n == name)
}

/// Further names of the scheduler's certificate: its Service's, and
/// loopback for `kubectl port-forward`. (Peers check the name every
/// certificate of the cluster carries; these serve other tools.)
pub fn scheduler_names(cluster: &DaskCluster) -> Vec<String> {
    let service = scheduler_name(cluster);
    let ns = cluster.namespace().unwrap_or_default();
    vec![
        service.clone(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

/// The volume of the scheduler's and workers' TLS files (when the cluster
/// has TLS), its mount, and the variable that points the runtime at it.
pub(super) fn tls_volume(cluster: &DaskCluster) -> Option<(Volume, VolumeMount)> {
    if !cluster.spec.tls_enabled() {
        return None;
    }
    let volume = Volume {
        name: TLS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls_secret_name(cluster)),
            // Readable by the runtime's group (the pod's fsGroup) only.
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: TLS_VOLUME.into(),
        mount_path: TLS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{cluster, worker};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_authority_survives_its_secret_and_certificates_fall_due() {
        let c = cluster(worker(1));
        let ca = new_authority(&c).unwrap();
        let s = ca_secret(&c, &ca);
        assert_eq!(s.metadata.name.as_deref(), Some("demo-daskrs-ca"));
        assert_eq!(s.immutable, Some(true));
        let again = authority_of(&s, &c).expect("the authority reads back");
        assert_eq!(again.cert_pem, ca.cert_pem);

        let issued = again
            .issue("server", &scheduler_names(&c), CERT_DAYS)
            .unwrap();
        let cert = certificate_secret(&c, tls_secret_name(&c), &ca, &issued);
        assert_eq!(cert.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(not_after_of(&cert), Some(issued.not_after));
        let now = SystemTime::now();
        assert!(!needs_issue(Some(&cert), &ca, now));
        assert!(needs_issue(None, &ca, now));
        // Two thirds of its life gone.
        let later = UNIX_EPOCH + Duration::from_secs(issued.not_after - 29 * 86_400);
        assert!(needs_issue(Some(&cert), &ca, later));
        // Issued by another authority, or without its expiry.
        let other = new_authority(&c).unwrap();
        assert!(needs_issue(Some(&cert), &other, now));
        let mut bare = cert.clone();
        bare.metadata.annotations = None;
        assert!(needs_issue(Some(&bare), &ca, now));
    }

    #[test]
    fn a_named_issuer_is_asked_for_the_certificates_the_operator_would_issue() {
        let c = cluster(worker(1));
        let issuer = IssuerRef {
            name: "team-ca".into(),
            kind: Some("ClusterIssuer".into()),
            group: None,
        };
        let certs = cert_manager_certificates(&c, &issuer);
        let names: Vec<_> = certs.iter().map(|o| o.name_any()).collect();
        assert_eq!(names, ["demo-daskrs-tls", "demo-daskrs-client"]);
        let server = &certs[0];
        let types = server.types.as_ref().unwrap();
        assert_eq!(types.api_version, "cert-manager.io/v1");
        assert_eq!(types.kind, "Certificate");
        assert_eq!(
            server.metadata.owner_references.as_ref().unwrap()[0].kind,
            "DaskCluster"
        );
        let spec = &server.data["spec"];
        assert_eq!(spec["secretName"], "demo-daskrs-tls");
        assert_eq!(
            spec["dnsNames"],
            serde_json::json!([
                "daskrs",
                "demo-scheduler",
                "demo-scheduler.data",
                "demo-scheduler.data.svc",
                "localhost"
            ])
        );
        assert_eq!(spec["ipAddresses"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(spec["duration"], "2160h0m0s");
        assert_eq!(spec["renewBefore"], "720h0m0s");
        assert_eq!(
            spec["issuerRef"],
            serde_json::json!({"name": "team-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(spec["privateKey"]["encoding"], "PKCS8");
        let client = &certs[1].data["spec"];
        assert_eq!(client["dnsNames"], serde_json::json!(["daskrs"]));
        assert!(client.get("ipAddresses").is_none());
        assert_eq!(
            client["secretTemplate"]["labels"]["daskrs.dev/cluster"],
            "demo"
        );
    }

    #[test]
    fn pods_mount_the_certificate_unless_tls_is_off() {
        let mut c = cluster(worker(1));
        let (volume, mount) = tls_volume(&c).expect("TLS is on by default");
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("demo-daskrs-tls")
        );
        assert_eq!(mount.mount_path, TLS_DIR);
        c.spec.tls = Some(crate::crd::TlsSpec {
            enabled: false,
            issuer_ref: None,
        });
        assert!(tls_volume(&c).is_none());
    }
}
