//! The `Dockerfile` makes the images the operator's pods expect: the runtime
//! image's entrypoint is the `daskrs` binary (pods pass only `scheduler` or
//! `worker` as arguments), and both images run as the user the pods' security
//! context names. (No container engine runs here, so the images themselves
//! are not built by the tests.)

use std::path::Path;

use daskrs_operator::builders::{Defaults, WorkerSizing, worker_pod};
use daskrs_operator::crd::DaskCluster;

/// The lines of the Dockerfile stage `name`, continuation lines joined.
fn stage(dockerfile: &str, name: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in joined.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            inside = from.ends_with(&format!(" AS {name}"));
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            lines.push(line.to_string());
        }
    }
    lines
}

#[test]
fn the_images_run_as_the_user_and_entrypoint_the_pods_expect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");

    let cluster: DaskCluster = serde_yaml::from_str(
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: c, namespace: n}\nspec:\n  worker: {replicas: 1}\n",
    )
    .expect("manifest");
    let pod = worker_pod(
        &cluster,
        &Defaults {
            image: "daskrs:test".into(),
            network_policies: true,
            operator_namespace: None,
        },
        &WorkerSizing {
            threads: 1,
            memory_limit: None,
        },
    );
    let spec = pod.spec.expect("pod spec");
    let uid = spec
        .security_context
        .and_then(|s| s.run_as_user)
        .expect("pods name a user");
    assert_eq!(
        spec.containers[0].command, None,
        "pods rely on the entrypoint"
    );

    let base = stage(&dockerfile, "base");
    assert!(
        base.contains(&format!("USER {uid}:{uid}")),
        "the images' base stage must run as uid {uid}: {base:?}"
    );
    for (target, binary) in [("runtime", "daskrs"), ("operator", "daskrs-operator")] {
        let lines = stage(&dockerfile, target);
        assert!(
            lines.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "target {target} must start {binary}: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("COPY --from=builder")
                && l.ends_with(&format!("/usr/local/bin/{binary}"))),
            "target {target} must hold {binary}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("USER ")),
            "target {target} keeps the base stage's user"
        );
    }
    // The builder makes both binaries, from the packages that define them.
    let build = stage(&dockerfile, "builder").join("\n");
    for package in ["daskrs-client", "daskrs-operator"] {
        assert!(
            build.contains(&format!("-p {package}")),
            "builder skips {package}"
        );
    }
    let client = std::fs::read_to_string(root.join("client/Cargo.toml")).expect("client manifest");
    assert!(
        client.contains("name = \"daskrs\""),
        "daskrs-client no longer builds `daskrs`"
    );
}
