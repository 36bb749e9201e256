//! The `Dockerfile` makes the images the operator's pods expect: the runtime
//! and python-worker images' entrypoint is the `daskrs` binary (pods pass
//! only `scheduler` or `worker` as arguments), every image runs as the user
//! the pods' security context names, and the python-worker image runs
//! Python tasks with the interpreter it installs the daskrs package into.
//! (No container engine runs here, so the images themselves are not built
//! by the tests.)

use std::collections::BTreeSet;
use std::path::Path;

use daskrs_operator::builders::{Defaults, WorkerSizing, worker_pod};
use daskrs_operator::crd::DaskCluster;
use k8s_openapi::api::core::v1::PodSpec;

/// A file of the repository, by its path from the root.
fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dockerfile() -> String {
    repo_file("Dockerfile")
}

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

/// The OCI label keys a stage sets.
fn label_keys(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("LABEL "))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("org.opencontainers.image."))
        .filter_map(|w| Some(w.split_once('=')?.0.to_string()))
        .collect()
}

/// The pod spec of a minimal cluster's worker, as the operator makes it
/// with `worker_image` as the workers' default image.
fn minimal_worker(worker_image: Option<&str>) -> PodSpec {
    let cluster: DaskCluster = serde_yaml::from_str(
        "apiVersion: daskrs.dev/v1alpha1\nkind: DaskCluster\nmetadata: {name: c, namespace: n}\nspec:\n  worker: {replicas: 1}\n",
    )
    .expect("manifest");
    let pod = worker_pod(
        &cluster,
        &Defaults {
            image: "daskrs:test".into(),
            worker_image: worker_image.map(String::from),
            network_policies: true,
            operator_namespace: None,
        },
        &WorkerSizing {
            threads: 1,
            memory_limit: None,
        },
    );
    pod.spec.expect("pod spec")
}

fn run_as_user(spec: &PodSpec) -> i64 {
    spec.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .expect("pods name a user")
}

#[test]
fn the_images_run_as_the_user_and_entrypoint_the_pods_expect() {
    let dockerfile = dockerfile();
    let spec = minimal_worker(None);
    let uid = run_as_user(&spec);
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
    let client = repo_file("client/Cargo.toml");
    assert!(
        client.contains("name = \"daskrs\""),
        "daskrs-client no longer builds `daskrs`"
    );
}

#[test]
fn the_python_worker_image_runs_python_tasks_as_the_worker_pods_expect() {
    let dockerfile = dockerfile();
    let spec = minimal_worker(Some("daskrs-python:test"));
    let uid = run_as_user(&spec);
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("daskrs-python:test"));
    // The pod starts the image's entrypoint, with `worker` only.
    assert_eq!(c.command, None, "worker pods rely on the entrypoint");
    assert_eq!(c.args.as_deref(), Some(&["worker".to_string()][..]));

    let lines = stage(&dockerfile, "python-worker");
    assert!(
        lines.contains(&"ENTRYPOINT [\"/usr/local/bin/daskrs\"]".to_string()),
        "python-worker must start daskrs: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("COPY --from=builder") && l.ends_with("/usr/local/bin/daskrs")),
        "python-worker must hold the builder's daskrs: {lines:?}"
    );
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER "));
    assert_eq!(
        user,
        Some(format!("{uid}:{uid}").as_str()),
        "python-worker must end as the pods' user"
    );
    let base = label_keys(&stage(&dockerfile, "base"));
    let own = label_keys(&lines);
    let missing: Vec<_> = base.difference(&own).collect();
    assert!(
        missing.is_empty(),
        "python-worker lacks the labels {missing:?}"
    );

    // `daskrs worker` runs Python tasks with $DASKRS_PYTHON: the interpreter
    // the stage installs the daskrs wheel and the task libraries into.
    let (env_at, python) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| Some((i, l.strip_prefix("ENV DASKRS_PYTHON=")?)))
        .expect("python-worker sets DASKRS_PYTHON");
    assert!(python.starts_with('/'), "DASKRS_PYTHON={python}");
    let (install_at, install) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains(" -m pip install "))
        .expect("python-worker installs with pip");
    let by_variable = ["\"$DASKRS_PYTHON\"", "\"${DASKRS_PYTHON}\""]
        .iter()
        .any(|v| install.contains(&format!("{v} -m pip install")));
    assert!(
        install.contains(&format!("{python} -m pip install"))
            || (by_variable && env_at < install_at),
        "the pip install must use DASKRS_PYTHON ({python}): {install}"
    );
    // The pip command's own words, up to the next command of the RUN.
    let pip = install
        .split_once(" -m pip install ")
        .and_then(|(_, rest)| rest.split("&&").next())
        .unwrap_or_default();
    let words: Vec<&str> = pip
        .split_whitespace()
        .map(|w| w.trim_matches(['"', '\'']))
        .collect();
    for library in ["numpy", "pandas", "pyarrow", "dask", "cloudpickle", "s3fs"] {
        assert!(
            words
                .iter()
                .any(|w| w.split(['[', '=', '<', '>', '~', '!']).next() == Some(library)),
            "the pip install skips {library}: {pip}"
        );
    }
    let wheel = words
        .iter()
        .find(|w| w.contains("/daskrs-") && w.ends_with(".whl"))
        .expect("the pip install names the daskrs wheel");
    // The wheel is the one maturin builds from python/ in another stage,
    // mounted where the pip install finds it.
    let wheel_dir = Path::new(wheel).parent().expect("the wheel's directory");
    let mount = install
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--mount="))
        .map(|m| {
            m.split(',')
                .filter_map(|kv| kv.split_once('='))
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .find(|m| m.get("target").map(Path::new) == Some(wheel_dir))
        .expect("the wheel's directory is mounted from a stage");
    let built = stage(&dockerfile, mount["from"]).join("\n");
    for want in [
        "maturin build".to_string(),
        "--manifest-path python/Cargo.toml".to_string(),
        format!("--out {}", mount["source"]),
    ] {
        assert!(
            built.contains(&want),
            "stage {} must build the wheel ({want}): {built}",
            mount["from"]
        );
    }
}
