//! The Helm chart `charts/daskrs` with the real `helm`: lint, what it
//! renders for a few sets of values, and an install into the real
//! kube-apiserver of the operator tests, after which the operator runs with
//! the chart's ServiceAccount and the arguments of the chart's Deployment.
//! The example manifests in `examples/` are applied to the same apiserver.

mod harness;

use std::process::{Command, Output};
use std::time::Duration;

use harness::{ControlPlane, Operator, bin_dir, control_plane, repo, stderr, stdout, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Deserialize;
use serde_yaml::Value;

const WAIT: Duration = Duration::from_secs(60);

fn helm(plane: Option<&ControlPlane>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin_dir().join("helm"));
    cmd.args(args).current_dir(repo());
    // helm keeps its own state out of $HOME.
    let home = std::env::temp_dir().join("daskrs-helm-test");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    match plane {
        Some(p) => cmd.env("KUBECONFIG", &p.kubeconfig),
        None => cmd.env("KUBECONFIG", "/nonexistent"),
    };
    cmd.output().expect("run helm")
}

/// The documents of `helm template` with these `--set` values.
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", "rel", "charts/daskrs", "--namespace", "ops"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm(None, &args);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    Ok(docs(&stdout(&out)))
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn args_of(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

/// Rules of a role as (apiGroup, resource, verb) triples, order-free.
fn rules(role: &Value) -> std::collections::BTreeSet<(String, String, String)> {
    let s = |v: &Value| v.as_str().expect("string").to_string();
    let mut out = std::collections::BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        for g in rule["apiGroups"].as_sequence().expect("apiGroups") {
            for r in rule["resources"].as_sequence().expect("resources") {
                for v in rule["verbs"].as_sequence().expect("verbs") {
                    out.insert((s(g), s(r), s(v)));
                }
            }
        }
    }
    out
}

#[test]
fn helm_lint_passes_for_the_default_and_a_namespaced_install() {
    for extra in [
        &[][..],
        &["--set", "watchNamespaces={team-a}"][..],
        &["--set", "watchNamespaces={team-a,team-b}"][..],
    ] {
        let mut args = vec!["lint", "--strict", "charts/daskrs"];
        args.extend(extra);
        let out = helm(None, &args);
        assert!(
            out.status.success(),
            "helm lint {extra:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn the_default_install_watches_all_namespaces_with_two_leader_elected_replicas() {
    let docs = render(&[]).expect("helm template");
    let deploy = find(&docs, "Deployment", "rel-daskrs").expect("operator Deployment");
    assert_eq!(deploy["metadata"]["namespace"], "ops");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let args = args_of(deploy);
    for want in [
        "--default-image=ghcr.io/daskrs/daskrs:0.1.0",
        "--worker-image=ghcr.io/daskrs/daskrs-python:0.1.0",
        "--leader-election=true",
        "--lease-namespace=ops",
        "--lease-name=rel-daskrs",
        "--metrics-addr=0.0.0.0:8080",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "rel-daskrs");
    assert_eq!(
        pod["containers"][0]["image"],
        "ghcr.io/daskrs/daskrs-operator:0.1.0"
    );
    let binding = find(&docs, "ClusterRoleBinding", "rel-daskrs").expect("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "rel-daskrs");
    assert_eq!(binding["subjects"][0]["namespace"], "ops");
    assert!(find(&docs, "RoleBinding", "rel-daskrs").is_none());
    assert!(find(&docs, "Service", "rel-daskrs-metrics").is_some());
    assert!(find(&docs, "ServiceMonitor", "rel-daskrs").is_none());
}

#[test]
fn workers_run_the_python_image_unless_the_values_name_another() {
    let worker_image = |sets: &[&str]| {
        let docs = render(sets).expect("helm template");
        let deploy = find(&docs, "Deployment", "rel-daskrs").expect("operator Deployment");
        let args = args_of(deploy);
        assert!(
            args.iter()
                .any(|a| a == "--default-image=ghcr.io/daskrs/daskrs:0.1.0"),
            "the scheduler keeps the runtime image: {args:?}"
        );
        args.iter()
            .find_map(|a| a.strip_prefix("--worker-image="))
            .map(String::from)
    };
    assert_eq!(
        worker_image(&["workerImage.tag=1.2.3"]).as_deref(),
        Some("ghcr.io/daskrs/daskrs-python:1.2.3")
    );
    // SQL-only workers, on the small runtime image.
    assert_eq!(
        worker_image(&["workerImage.repository=ghcr.io/daskrs/daskrs"]).as_deref(),
        Some("ghcr.io/daskrs/daskrs:0.1.0")
    );
    // No repository: workers run the default image, as the scheduler does.
    assert_eq!(worker_image(&["workerImage.repository="]), None);
}

#[test]
fn watched_namespaces_bind_the_role_in_those_namespaces_only() {
    let docs = render(&["watchNamespaces={team-a,team-b}"]).expect("helm template");
    let deploy = find(&docs, "Deployment", "rel-daskrs").expect("operator Deployment");
    assert!(
        args_of(deploy)
            .iter()
            .any(|a| a == "--namespace=team-a,team-b")
    );
    assert!(find(&docs, "ClusterRoleBinding", "rel-daskrs").is_none());
    let bindings: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "rel-daskrs")
        .collect();
    let namespaces: Vec<&str> = bindings
        .iter()
        .map(|b| b["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    for b in &bindings {
        assert_eq!(b["roleRef"]["kind"], "ClusterRole");
        assert_eq!(b["subjects"][0]["namespace"], "ops");
    }
    let lease = find(&docs, "RoleBinding", "rel-daskrs-leader-election").expect("lease binding");
    assert_eq!(lease["metadata"]["namespace"], "ops");
}

#[test]
fn the_chart_grants_exactly_the_operators_documented_roles() {
    let docs = render(&[]).expect("helm template");
    let file = std::fs::read_to_string(repo().join("operator/rbac/clusterrole.yaml"))
        .expect("operator/rbac/clusterrole.yaml");
    let documented = self::docs(&file);
    let operator = find(&documented, "ClusterRole", "daskrs-operator").expect("role");
    let leader = find(
        &documented,
        "ClusterRole",
        "daskrs-operator-leader-election",
    )
    .expect("leader-election role");
    let chart_operator = find(&docs, "ClusterRole", "rel-daskrs").expect("chart ClusterRole");
    let chart_leader = find(&docs, "Role", "rel-daskrs-leader-election").expect("chart Role");
    assert_eq!(rules(chart_operator), rules(operator));
    assert_eq!(rules(chart_leader), rules(leader));
}

#[test]
fn values_that_cannot_work_are_refused_with_a_reason() {
    let err = render(&["leaderElection.enabled=false"]).expect_err("two replicas, no Lease");
    assert!(
        err.contains("replicaCount above 1 needs leaderElection.enabled"),
        "{err}"
    );
    let single = render(&["leaderElection.enabled=false", "replicaCount=1"])
        .expect("one replica without a Lease");
    assert!(find(&single, "Role", "rel-daskrs-leader-election").is_none());
    let err = render(&[
        "serviceMonitor.enabled=true",
        "metrics.service.enabled=false",
    ])
    .expect_err("ServiceMonitor without a Service");
    assert!(err.contains("serviceMonitor.enabled needs"), "{err}");
    let monitored = render(&["serviceMonitor.enabled=true"]).expect("ServiceMonitor");
    let sm = find(&monitored, "ServiceMonitor", "rel-daskrs").expect("ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let err = render(&["serviceAccount.create=false"]).expect_err("no ServiceAccount name");
    assert!(err.contains("serviceAccount.name is required"), "{err}");
    let err = render(&["watchNamespace=team-a"]).expect_err("the old single-namespace value");
    assert!(err.contains("replaced by watchNamespaces"), "{err}");
    let err = render(&["watchNamespaces=team-a"]).expect_err("a string, not a list");
    assert!(err.contains("watchNamespaces must be a list"), "{err}");
    let twice = render(&["watchNamespaces={team-a,team-a}"]).expect("a repeated namespace");
    let bindings = twice
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "rel-daskrs")
        .count();
    assert_eq!(bindings, 1);
}

/// Arguments of the installed Deployment, for a local run: the metrics
/// address moved to a free loopback port.
fn local_args(deploy: &Value, metrics: std::net::SocketAddr) -> Vec<String> {
    args_of(deploy)
        .into_iter()
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr={metrics}")
            } else {
                a
            }
        })
        .collect()
}

async fn worker_pods(client: &Client, ns: &str, cluster: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "daskrs.dev/cluster={cluster},daskrs.dev/role=worker"
        )))
        .await
        .expect("list pods")
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_the_operator_with_the_charts_account_and_the_examples_apply() {
    let plane = control_plane();
    let client = plane.client().await;
    let ops = harness::namespace(&client, "chart-ops").await;
    let team = harness::namespace(&client, "chart-team").await;
    let other = harness::namespace(&client, "chart-other").await;
    let release = format!("it-{ops}");

    let out = helm(
        Some(plane),
        &[
            "install",
            &release,
            "charts/daskrs",
            "--namespace",
            &ops,
            "--set",
            &format!("watchNamespaces={{{team},{other}}}"),
            "--wait=false",
        ],
    );
    assert!(out.status.success(), "helm install: {}", stderr(&out));
    assert!(
        stdout(&out).contains("kubectl get daskclusters"),
        "NOTES.txt not shown: {}",
        stdout(&out)
    );

    // The Deployment's ReplicaSet makes both operator pods in a namespace
    // that enforces the restricted Pod Security Standard.
    let name = format!("{release}-daskrs");
    wait_for("2 operator pods", WAIT, || async {
        let out = plane.kubectl(&[
            "get",
            "pods",
            "-n",
            &ops,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ]);
        (stdout(&out).lines().count() == 2).then_some(())
    })
    .await;

    // The operator as its Deployment runs it, with its ServiceAccount's token.
    let deploy = plane.kubectl(&["get", "deployment", &name, "-n", &ops, "-o", "yaml"]);
    assert!(deploy.status.success(), "{}", stderr(&deploy));
    let deploy: Value = serde_yaml::from_str(&stdout(&deploy)).expect("Deployment YAML");
    let token = plane.kubectl(&["create", "token", &name, "-n", &ops, "--duration=1h"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let kubeconfig = plane.kubeconfig_with_token(&name, stdout(&token).trim());
    let metrics = harness::metrics_address();
    let op = Operator::start_args(
        plane,
        &kubeconfig,
        &local_args(&deploy, metrics),
        &release,
        &format!("{release}-0"),
        metrics,
    );
    assert!(op.wait_leader(WAIT).await, "no leader: {}", op.log());

    // Every example manifest is accepted, and each cluster gets its workers.
    let mut clusters = 0;
    for file in examples() {
        let out = plane.kubectl(&["apply", "-n", &team, "-f", &file]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        let text = std::fs::read_to_string(repo().join(&file)).expect("read example");
        for doc in docs(&text).iter().filter(|d| d["kind"] == "DaskCluster") {
            clusters += 1;
            let cluster = doc["metadata"]["name"].as_str().expect("name");
            let workers = doc["spec"]["worker"]["replicas"]
                .as_u64()
                .expect("replicas") as usize;
            let pods = wait_for(&format!("{workers} workers of {file}"), WAIT, || async {
                let p = worker_pods(&client, &team, cluster).await;
                (p.len() == workers).then_some(p)
            })
            .await;
            let spec = pods[0].spec.as_ref().expect("pod spec");
            // The API server fills in `default` when the manifest names none.
            let account = doc["spec"]["worker"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            assert_eq!(
                spec.service_account_name.as_deref(),
                Some(account),
                "{file}"
            );
            let env = spec.containers[0].env.as_deref().unwrap_or_default();
            assert!(
                !env.iter().any(|e| e.name.starts_with("AWS_SECRET")),
                "{file}: pods without a credentials Secret carry no keys"
            );
        }
    }
    assert!(clusters >= 3, "examples/ holds {clusters} DaskClusters");
    // The second watched namespace is reconciled as well.
    let out = plane.kubectl(&["apply", "-n", &other, "-f", "examples/cluster.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(repo().join("examples/cluster.yaml")).expect("read example");
    let doc = docs(&text)
        .into_iter()
        .find(|d| d["kind"] == "DaskCluster")
        .expect("a DaskCluster in examples/cluster.yaml");
    let cluster = doc["metadata"]["name"].as_str().expect("name");
    let workers = doc["spec"]["worker"]["replicas"]
        .as_u64()
        .expect("replicas") as usize;
    wait_for(&format!("{workers} workers in {other}"), WAIT, || async {
        (worker_pods(&client, &other, cluster).await.len() == workers).then_some(())
    })
    .await;
    let log = op.log();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC lacks a permission:\n{log}"
    );

    // Uninstalling removes the cluster-scoped objects too.
    let out = helm(Some(plane), &["uninstall", &release, "--namespace", &ops]);
    assert!(out.status.success(), "helm uninstall: {}", stderr(&out));
    let left = plane.kubectl(&[
        "get",
        "clusterrole",
        &name,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert_eq!(stdout(&left).trim(), "", "ClusterRole left behind");
    drop(op);
}

/// The example manifests, as paths from the repo root.
fn examples() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("examples/{n}"))
        .collect();
    v.sort();
    v
}
