//! The cluster's token Secret: one per DaskCluster, made once with a fresh
//! random token, owned by the cluster (so deleted with it), and read by its
//! pods through `DASKRS_TOKEN`. The token is never written anywhere else.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::{LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGER, owned_meta};
use crate::crd::DaskCluster;

/// The key of the token in the Secret's data.
pub const TOKEN_KEY: &str = "token";

pub fn token_secret_name(cluster: &DaskCluster) -> String {
    format!("{}-daskrs-token", cluster.name_any())
}

/// A fresh token: 32 bytes of the system's random source, as hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random number generator is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_secret(cluster: &DaskCluster, token: &str) -> Secret {
    let labels = BTreeMap::from([
        (LABEL_CLUSTER.to_string(), cluster.name_any()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ]);
    Secret {
        metadata: owned_meta(cluster, token_secret_name(cluster), labels),
        type_: Some("Opaque".into()),
        // A token changes only by a new Secret (see `ensure_token`).
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Whether `secret` is this cluster's own, not one left by an earlier
/// cluster of the same name that Kubernetes has yet to delete.
pub fn owned_by(secret: &Secret, cluster: &DaskCluster) -> bool {
    let uid = cluster.metadata.uid.as_deref();
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

/// The token a Secret holds, if it holds a usable one.
pub fn token_of(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(TOKEN_KEY)?.0;
    let text = std::str::from_utf8(bytes).ok()?.trim();
    daskrs_core::is_token(text).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{cluster, worker};

    #[test]
    fn the_secret_is_the_clusters_and_holds_a_fresh_token() {
        let c = cluster(worker(1));
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let s = token_secret(&c, &a);
        assert_eq!(s.metadata.name.as_deref(), Some("demo-daskrs-token"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DaskCluster", Some(true))
        );
        assert_eq!(token_of(&s), Some(a));
        assert_eq!(s.immutable, Some(true));
        let mut earlier = s.clone();
        earlier.metadata.owner_references.as_mut().unwrap()[0].uid = "an-earlier-uid".into();
        assert!(owned_by(&s, &c) && !owned_by(&earlier, &c));
        let mut spoilt = s.clone();
        spoilt.data = Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(b"a b".to_vec()),
        )]));
        assert_eq!(token_of(&spoilt), None);
    }
}
