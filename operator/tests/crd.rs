//! `crds/daskcluster.yaml` and the Helm chart's copy are what the Rust types say.

use std::path::Path;

#[test]
fn the_crd_files_match_the_types() {
    let generated = daskrs_operator::crd::crd_yaml();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "crds/daskcluster.yaml",
        "charts/daskrs/crds/daskcluster.yaml",
    ] {
        let on_disk = std::fs::read_to_string(root.join(file)).expect(file);
        assert!(
            on_disk == generated,
            "{file} is stale: run `cargo run -p daskrs-operator --bin crdgen -- {}`",
            "crds/daskcluster.yaml charts/daskrs/crds/daskcluster.yaml"
        );
    }
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
