//! Command-line mistakes are refused before the operator touches the cluster.

use std::process::Command;

/// Runs the operator with `args`; it must refuse them as a usage error.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_daskrs-operator"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("the operator binary runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_namespace_name_is_refused_with_the_name() {
    let err = refused(&["--namespace", "team-a,Team_B"]);
    assert!(err.contains("\"Team_B\" is not a namespace name"), "{err}");
}

#[test]
fn an_empty_namespace_is_refused_rather_than_watching_all() {
    let err = refused(&["--namespace", "team-a,"]);
    assert!(err.contains("\"\" is not a namespace name"), "{err}");
}
