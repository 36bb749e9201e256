//! Command-line mistakes are refused before the operator touches the cluster.

use std::process::Command;

#[test]
fn a_bad_namespace_name_is_refused_with_the_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_daskrs-operator"))
        .args(["--namespace", "team-a,Team_B"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("the operator binary runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"Team_B\" is not a namespace name"), "{err}");
}

#[test]
fn an_empty_namespace_is_refused_rather_than_watching_all() {
    let out = Command::new(env!("CARGO_BIN_EXE_daskrs-operator"))
        .args(["--namespace", "team-a,"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("the operator binary runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"\" is not a namespace name"), "{err}");
}
