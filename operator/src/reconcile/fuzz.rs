//! Fuzz target of what the operator makes of a DaskCluster: any manifest
//! the API server could hold (its YAML bent from the examples and test
//! fixtures) is read, validated and, when valid, built into the objects
//! the cluster asks for; none may panic the operator. `cargo test` runs a
//! bounded number of inputs (see `daskrs_core::fuzz`); `cargo bolero test
//! reconcile::fuzz::manifests -p daskrs-operator` runs it for as long as
//! asked, guided by coverage.

use daskrs_core::fuzz;

use super::build::build;
use super::validate::validate;
use crate::builders::{self, Defaults};
use crate::crd::DaskCluster;

const EXAMPLES: [&[u8]; 8] = [
    include_bytes!("../../tests/fixtures/minimal.yaml"),
    include_bytes!("../../tests/fixtures/sized.yaml"),
    include_bytes!("../../tests/fixtures/autoscaling.yaml"),
    include_bytes!("../../tests/fixtures/bad-quantities.yaml"),
    include_bytes!("../../tests/fixtures/idle-timeout-overflow.yaml"),
    include_bytes!("../../tests/fixtures/issuer.yaml"),
    include_bytes!("../../../examples/cluster-s3-irsa.yaml"),
    include_bytes!("../../../examples/cluster-autoscaling.yaml"),
];

#[test]
fn manifests() {
    let defaults = Defaults {
        image: "daskrs:fuzz".into(),
        worker_image: None,
        network_policies: true,
        operator_namespace: Some("daskrs-system".into()),
    };
    bolero::check!()
        .with_type::<fuzz::Input>()
        .with_iterations(fuzz::inputs(20_000))
        .for_each(|input| {
            let yaml = fuzz::bytes(&EXAMPLES, input);
            let Ok(cluster) = serde_yaml::from_slice::<DaskCluster>(&yaml) else {
                return;
            };
            if let Ok(valid) = validate(&cluster) {
                let desired = build(&cluster, &valid, &defaults);
                let _ = serde_json::to_vec(&desired.deployment);
                let _ = serde_json::to_vec(&desired.worker);
                let _ = builders::token_secret(&cluster, "t");
                let _ = builders::scheduler_names(&cluster);
                if let Some(issuer) = cluster.spec.tls_issuer() {
                    let _ = builders::cert_manager_certificates(&cluster, issuer);
                }
            }
        });
}
