//! `crds/daskcluster.yaml` is what the Rust types say.

use std::path::Path;

#[test]
fn the_crd_file_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/daskcluster.yaml");
    let on_disk = std::fs::read_to_string(&path).expect("read crds/daskcluster.yaml");
    let generated = daskrs_operator::crd::crd_yaml();
    assert!(
        on_disk == generated,
        "crds/daskcluster.yaml is stale: run `cargo run -p daskrs-operator --bin crdgen -- crds/daskcluster.yaml`"
    );
}

#[test]
fn a_manifest_with_only_worker_replicas_parses() {
    let c: daskrs_operator::crd::DaskCluster = serde_yaml::from_str(
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: demo}\nspec:\n  worker: {replicas: 3}\n",
    )
    .expect("parse");
    assert_eq!(c.spec.worker.replicas, 3);
    assert_eq!(c.spec.image, None);
}
