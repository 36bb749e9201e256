//! The user's path, end to end, on a real control plane (etcd,
//! kube-apiserver, kube-controller-manager) with the real `helm` and
//! `kubectl`: `helm install` the chart, run the operator with the arguments
//! and the ServiceAccount its Deployment gives it, `kubectl apply` the
//! example cluster, query TPC-H data in S3 (a MinIO server) through the
//! scheduler, `kubectl scale` up and down while queries run, and
//! `kubectl delete` the cluster.
//!
//! No kubelet runs: a test node (`harness::node`) plays it, and runs each
//! pod's container as a process of the `daskrs` binary built from this
//! workspace (see `harness::net` for how the cluster network is rendered
//! on loopback).

mod harness;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daskrs_client::Client;
use daskrs_engine::{compare, tpch};
use harness::install::{
    chart_images, diagnostics, helm_install, nothing_left_running, operator_binary, s3_credentials,
    start_node, start_operator,
};
use harness::kube::{ControlPlane, repo, require_tools, stderr, stdout, wait_for};
use harness::net::ClusterNet;
use harness::node::tail;
use harness::pod_env::{Image, expand, map_path, own_address, test_python};
use harness::s3::Minio;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, ResourceExt};

/// The user's namespace, and the operator's.
const NS: &str = "analytics";
const CLUSTER: &str = "demo";
const WAIT: Duration = Duration::from_secs(180);
/// Where the TPC-H data lives in S3, as `examples/query.sql` expects it.
const DATA_URL: &str = "s3://tpch/sf0.01";
/// TPC-H queries run, over and over, while the cluster scales.
const QUERIES: [usize; 6] = [1, 3, 5, 9, 10, 18];

fn dask_clusters(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("daskrs.dev", "v1alpha1", "DaskCluster");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "daskclusters");
    Api::namespaced_with(client.clone(), NS, &ar)
}

/// The cluster's worker pods that are not being deleted, by name.
async fn worker_pods(client: &kube::Client) -> Vec<Pod> {
    let selector = format!("daskrs.dev/cluster={CLUSTER},daskrs.dev/role=worker");
    let mut pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list worker pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    pods
}

fn ready(p: &Pod) -> bool {
    harness::net::pod_ready(p)
}

/// Whether the DaskCluster has settled at `workers` ready workers: phase
/// Running for its current generation, every worker pod ready, and the
/// scheduler knowing exactly those workers by their pod names.
async fn settled(client: &kube::Client, scheduler: Option<&Client>, workers: usize) -> bool {
    let Ok(dc) = dask_clusters(client).get(CLUSTER).await else {
        return false;
    };
    let status = &dc.data["status"];
    let current = status["observedGeneration"].as_i64() == dc.metadata.generation;
    if !current
        || status["phase"] != "Running"
        || status["readyReplicas"].as_u64() != Some(workers as u64)
        || status["replicas"].as_u64() != Some(workers as u64)
    {
        return false;
    }
    let pods = worker_pods(client).await;
    if pods.len() != workers || !pods.iter().all(ready) {
        return false;
    }
    let Some(scheduler) = scheduler else {
        return true;
    };
    let Ok(info) = scheduler.info().await else {
        return false;
    };
    let known: BTreeSet<String> = info.workers.iter().map(|w| w.name.clone()).collect();
    let pods: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    known == pods
}

/// The address `kubectl port-forward svc/demo-scheduler 8786` forwards to:
/// the ready scheduler pod's address and port.
async fn scheduler_target(client: &kube::Client) -> Option<SocketAddr> {
    let selector = format!("daskrs.dev/cluster={CLUSTER},daskrs.dev/role=scheduler");
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    let pod = pods
        .items
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_none() && ready(p))?;
    let ip: Ipv4Addr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    Some(SocketAddr::from((ip, 8786)))
}

/// One run of a query while the cluster scales: its place on a logical
/// clock shared with the scale events.
struct Run {
    query: usize,
    start: u64,
    end: u64,
    outcome: Result<(), String>,
}

fn overlaps(runs: &[Run], from: u64, to: u64) -> usize {
    runs.iter().filter(|r| r.start < to && r.end > from).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_apply_query_scale_and_delete_a_cluster() {
    require_tools();
    operator_binary();
    // The Python of the workers' image, checked before anything starts.
    let python = test_python();
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("e2e: {:6.1}s {what}", started.elapsed().as_secs_f64());

    // TPC-H data in S3.
    let minio = Minio::start();
    let data = tempfile::tempdir().expect("temporary directory");
    let tpch_dir = data.path().join("tpch");
    minio.put_tpch(DATA_URL, &tpch_dir).await;
    let local_sql = |sql: &str| sql.replace(DATA_URL, &tpch_dir.display().to_string());

    step("TPC-H data in MinIO");

    // The control plane, and the chart installed as the README says, for
    // one watched namespace.
    let plane = ControlPlane::start_e2e();
    let client = plane.client().await;
    plane.kubectl_ok(&["create", "namespace", NS]);
    let args = helm_install(&plane, NS);

    step("control plane up, chart installed");

    // The node that runs the cluster's pods, and the operator, run here as
    // its Deployment runs it in the cluster.
    let agent = start_node(&plane, &client, NS, chart_images(&args, &python)).await;
    let operator = start_operator(&plane, &agent, args, WAIT).await;
    let diag = || diagnostics(&plane, &agent, Some(&operator), NS);

    step("the operator leads");

    // The example cluster, then S3 settings on top: where the data is and
    // a Secret with the keys.
    s3_credentials(&plane, NS);
    plane.kubectl_ok(&["apply", "-n", NS, "-f", "examples/cluster.yaml"]);
    let log_env = serde_json::json!([{ "name": "DASKRS_LOG", "value": "info" }]);
    let patch = serde_json::json!({
        "spec": {
            "s3": {
                "endpoint": minio.endpoint,
                "region": "us-east-1",
                "credentialsSecret": { "name": "s3-credentials" },
            },
            "scheduler": { "env": log_env },
            "worker": { "env": log_env },
        }
    });
    plane.kubectl_ok(&[
        "patch",
        "daskcluster",
        CLUSTER,
        "-n",
        NS,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    wait_for(
        "the cluster to run 2 ready workers",
        WAIT,
        &diag,
        || async { settled(&client, None, 2).await.then_some(()) },
    )
    .await;
    let target = wait_for("a ready scheduler pod", WAIT, &diag, || {
        scheduler_target(&client)
    })
    .await;
    // The token and the client certificate, as the README tells a user to
    // get them for `port-forward`.
    let secret = format!("{CLUSTER}-daskrs-token");
    let token = daskrs_proto::auth::Token::parse(
        &secret_key(&plane, &secret, "token"),
        "the cluster's Secret",
    )
    .expect("a usable token");
    let tls_dir = data.path().join("client-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let client_secret = format!("{CLUSTER}-daskrs-client");
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(tls_dir.join(file), secret_key(&plane, &client_secret, file)).unwrap();
    }
    let tls = daskrs_proto::tls::Tls::load(&tls_dir).expect("the client certificate's files");
    let plain = Client::connect(&target.to_string(), Some(&token))
        .await
        .expect("connect to the scheduler pod")
        .info()
        .await
        .expect_err("no plain-text call to a TLS scheduler");
    assert!(
        plain.to_string().contains("TLS connections only"),
        "{plain}"
    );
    let refused = Client::connect_with(&target.to_string(), None, Some(&tls))
        .await
        .expect("connect to the scheduler pod")
        .info()
        .await
        .expect_err("no call without the token");
    assert!(
        refused.to_string().contains("requires a token"),
        "{refused}"
    );
    let scheduler = Client::connect_with(&target.to_string(), Some(&token), Some(&tls))
        .await
        .expect("connect to the scheduler pod");
    wait_for(
        "the scheduler to know both workers by pod name",
        WAIT,
        &diag,
        || async { settled(&client, Some(&scheduler), 2).await.then_some(()) },
    )
    .await;
    // The workers run the python-worker image, so they run Python tasks.
    let info = scheduler.info().await.expect("the cluster's workers");
    for w in &info.workers {
        assert!(
            w.python.contains("daskrs"),
            "worker {} runs no Python with the daskrs package: {:?}",
            w.name,
            w.python
        );
    }

    step("the cluster runs with 2 workers");

    // A query file as a user runs it, answered as single-node DataFusion
    // answers it on the same data.
    let query_file = repo().join("examples/query.sql");
    let answer = data.path().join("answer.parquet");
    let out = Command::new(harness::BIN)
        .args([
            "sql",
            "--scheduler",
            &target.to_string(),
            "--no-progress",
            "-f",
        ])
        .arg(&query_file)
        .arg("-o")
        .arg(&answer)
        .env("DASKRS_LOG", "warn")
        .env(daskrs_proto::auth::TOKEN_ENV, token.expose())
        .env(daskrs_proto::tls::TLS_DIR_ENV, &tls_dir)
        .output()
        .expect("run daskrs sql");
    assert!(
        out.status.success(),
        "daskrs sql -f examples/query.sql: {}\n{}",
        stderr(&out),
        diag()
    );
    let reference = compare::single_node_context(None);
    let sql = std::fs::read_to_string(&query_file).expect("read examples/query.sql");
    let want = compare::run_sql(&reference, &local_sql(&sql))
        .await
        .expect("single-node answer");
    let got = compare::run_sql(&reference, &format!("select * from '{}'", answer.display()))
        .await
        .expect("read the answer file");
    let want = compare::rows(&want).expect("rows");
    assert!(!want.is_empty(), "examples/query.sql answers no rows");
    assert_eq!(
        compare::rows(&got).expect("rows"),
        want,
        "examples/query.sql: the cluster's answer differs from single-node DataFusion's"
    );

    step("examples/query.sql answered");

    // Queries run without pause while the cluster scales to 3 workers and
    // back to 1; every answer is checked.
    scheduler
        .sql(&tpch::create_tables(DATA_URL), |_| {})
        .await
        .expect("create the TPC-H tables");
    compare::run_sql(
        &reference,
        &tpch::create_tables(&tpch_dir.display().to_string()),
    )
    .await
    .expect("single-node tables");
    let mut answers = Vec::new();
    for q in QUERIES {
        let sql = tpch::query(q).expect("a TPC-H query");
        let want = compare::run_sql(&reference, sql)
            .await
            .expect("single-node answer");
        answers.push((q, sql, compare::rows(&want).expect("rows")));
    }
    let clock = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let runner = {
        let (clock, stop, runs, scheduler) =
            (clock.clone(), stop.clone(), runs.clone(), scheduler.clone());
        tokio::spawn(async move {
            for (query, sql, want) in answers.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let start = clock.fetch_add(1, Ordering::SeqCst);
                let answer = scheduler.sql(sql, |_| {}).await;
                let end = clock.fetch_add(1, Ordering::SeqCst);
                let outcome = match answer {
                    Ok(a) => match compare::rows(&a.batches) {
                        Ok(got) if got == *want => Ok(()),
                        Ok(got) => Err(format!("answer differs:\n got {got:?}\nwant {want:?}")),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.to_string()),
                };
                let failed = outcome.is_err();
                runs.lock().expect("runs").push(Run {
                    query: *query,
                    start,
                    end,
                    outcome,
                });
                if failed {
                    break;
                }
            }
        })
    };
    let runs_done = |after: u64| {
        let runs = runs.clone();
        async move {
            let r = runs.lock().expect("runs");
            (r.iter().any(|r| r.start > after) || r.iter().any(|r| r.outcome.is_err()))
                .then_some(())
        }
    };

    let up_start = clock.fetch_add(1, Ordering::SeqCst);
    plane.kubectl_ok(&["scale", "daskcluster", CLUSTER, "-n", NS, "--replicas", "3"]);
    wait_for(
        "3 ready workers the scheduler knows",
        WAIT,
        &diag,
        || async { settled(&client, Some(&scheduler), 3).await.then_some(()) },
    )
    .await;
    let up_end = clock.fetch_add(1, Ordering::SeqCst);
    let three: BTreeSet<String> = worker_pods(&client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();

    step("3 workers");

    let proxied_before = agent.proxied().len();
    let down_start = clock.fetch_add(1, Ordering::SeqCst);
    plane.kubectl_ok(&["scale", "daskcluster", CLUSTER, "-n", NS, "--replicas", "1"]);
    wait_for(
        "1 ready worker the scheduler knows",
        WAIT,
        &diag,
        || async { settled(&client, Some(&scheduler), 1).await.then_some(()) },
    )
    .await;
    // The removed workers' pods are gone, and so are their processes.
    wait_for(
        "the removed workers' pods and processes to go",
        WAIT,
        &diag,
        || async {
            let selector = format!("daskrs.dev/cluster={CLUSTER},daskrs.dev/role=worker");
            let pods = Api::<Pod>::namespaced(client.clone(), NS)
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let workers = agent
                .processes()
                .iter()
                .filter(|(_, pod)| pod.starts_with(&format!("{CLUSTER}-worker-")))
                .count();
            (pods.items.len() == 1 && workers == 1).then_some(())
        },
    )
    .await;
    let down_end = clock.fetch_add(1, Ordering::SeqCst);
    step("1 worker");

    // And a query that starts after the scale-down answers too.
    wait_for("a query after the scale-down", WAIT, &diag, || {
        runs_done(down_end)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(WAIT, runner)
        .await
        .unwrap_or_else(|_| panic!("the last query did not end\n{}", diag()))
        .expect("the query runner");

    let runs = std::mem::take(&mut *runs.lock().expect("runs"));
    for r in &runs {
        if let Err(e) = &r.outcome {
            panic!(
                "TPC-H Q{} (started at tick {}; scale up {up_start}..{up_end}, down {down_start}..{down_end}) failed: {e}\n{}",
                r.query,
                r.start,
                diag()
            );
        }
    }
    assert!(
        overlaps(&runs, up_start, up_end) > 0,
        "no query ran while the cluster scaled up"
    );
    assert!(
        overlaps(&runs, down_start, down_end) > 0,
        "no query ran while the cluster scaled down"
    );
    eprintln!(
        "{} queries answered correctly: {} while scaling up, {} while scaling down",
        runs.len(),
        overlaps(&runs, up_start, up_end),
        overlaps(&runs, down_start, down_end)
    );

    // The two workers that left were retired through the scheduler, which
    // let them hand off their results, before their pods were deleted: the
    // operator asked the scheduler's API (through the Service's name) and
    // the scheduler answered with exactly those workers.
    let one: BTreeSet<String> = worker_pods(&client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let removed: BTreeSet<String> = three.difference(&one).cloned().collect();
    assert_eq!(removed.len(), 2, "3 workers {three:?}, then {one:?}");
    let retire_url = format!("http://{CLUSTER}-scheduler.{NS}.svc:8787/api/v1/retire");
    let calls: Vec<_> = agent.proxied()[proxied_before..]
        .iter()
        .filter(|p| p.method == "POST" && p.url == retire_url)
        .cloned()
        .collect();
    let retired: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.status == Some(200))
        .filter_map(|c| serde_json::from_str::<serde_json::Value>(&c.body).ok())
        .flat_map(|v| {
            v["retired"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(String::from))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        retired,
        removed,
        "the scheduler retired other workers than the pods removed; retire calls: {calls:?}\n{}",
        diag()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    wait_for("a WorkersRetired event", WAIT, &diag, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("WorkersRetired"))
            .then_some(())
    })
    .await;
    let log = operator.log();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC lacks a permission:\n{}",
        tail(&log, 40)
    );

    step("queries and retirement checked");

    // Deleting the cluster leaves no pod and no process.
    drop(scheduler);
    plane.kubectl_ok(&["delete", "daskcluster", CLUSTER, "-n", NS, "--timeout=120s"]);
    wait_for("no pods and no processes left", WAIT, &diag, || {
        nothing_left_running(&client, &agent, NS)
    })
    .await;
    step("cluster deleted: no pods, no processes");

    let left = plane.kubectl_ok(&["get", "deployments,services", "-n", NS, "-o", "name"]);
    assert_eq!(left.trim(), "", "left behind by the deleted cluster");
    wait_for(
        "the cluster's token and TLS Secrets to go with it",
        WAIT,
        &diag,
        || async {
            let out = plane.kubectl(&["get", "secrets", "-n", NS, "-o", "name"]);
            let names = stdout(&out);
            let left: Vec<&str> = names.lines().filter(|n| n.contains(CLUSTER)).collect();
            (out.status.success() && left.is_empty()).then_some(())
        },
    )
    .await;
}

/// The text under `key` of the Secret `name`, as `kubectl get secret -o
/// jsonpath` gives it to a user (base64), decoded.
fn secret_key(plane: &ControlPlane, name: &str, key: &str) -> String {
    let path = format!("jsonpath={{.data.{}}}", key.replace('.', "\\."));
    let encoded = plane.kubectl_ok(&["get", "secret", name, "-n", NS, "-o", &path]);
    let decoded: k8s_openapi::ByteString =
        serde_json::from_value(serde_json::json!(encoded.trim())).expect("base64 data");
    String::from_utf8(decoded.0).expect("text")
}

/// What the node does to a container's configuration, checked without a
/// control plane.
#[test]
fn the_test_node_renders_a_pod_like_the_kubelet_on_its_own_network() {
    let env = vec![("A".to_string(), "1".to_string())];
    assert_eq!(expand("$(A):8788", &env), "1:8788");
    assert_eq!(expand("$(B)-$(A)", &env), "$(B)-1");
    assert_eq!(expand("$$(A) $ x", &env), "$(A) $ x");
    assert_eq!(expand("$(A", &env), "$(A");

    let mounts = vec![("/var/lib/daskrs".to_string(), PathBuf::from("/n/v"))];
    assert_eq!(map_path("/var/lib/daskrs", &mounts), "/n/v");
    assert_eq!(map_path("/var/lib/daskrs/x", &mounts), "/n/v/x");
    assert_eq!(map_path("/var/lib/daskrs2", &mounts), "/var/lib/daskrs2");

    let ip = Ipv4Addr::new(127, 1, 2, 3);
    assert_eq!(own_address("0.0.0.0", ip), "127.1.2.3");
    assert_eq!(own_address("0.0.0.0:80", ip), "127.1.2.3:80");
    assert_eq!(own_address("0.0.0.01", ip), "0.0.0.01");

    let image = Image::daskrs("ghcr.io/daskrs/daskrs", Path::new("/bin/daskrs"));
    assert!(image.matches("ghcr.io/daskrs/daskrs:0.1.0"));
    assert!(image.matches("ghcr.io/daskrs/daskrs"));
    assert!(!image.matches("ghcr.io/daskrs/daskrs-operator:0.1.0"));
    assert!(!image.matches("localhost:5000/daskrs"));
    let python = Image::python(
        "ghcr.io/daskrs/daskrs-python",
        Path::new("/bin/daskrs"),
        Path::new("/venv/bin/python"),
    );
    assert!(python.matches("ghcr.io/daskrs/daskrs-python:0.1.0"));
    assert!(!python.matches("ghcr.io/daskrs/daskrs:0.1.0"));
    assert!(!image.matches("ghcr.io/daskrs/daskrs-python:0.1.0"));
    let var = |name: &str| {
        python
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(var("DASKRS_PYTHON"), Some("/venv/bin/python"));
    assert!(var("PATH").is_some_and(|p| p.starts_with("/venv/bin:")));
    assert_eq!(python.workdir, "/var/lib/daskrs");

    // Unknown `*.svc` names make a pod wait; other words stay as written.
    let net = ClusterNet::new(NS);
    assert_eq!(
        net.rewrite("demo-scheduler:8786").as_deref(),
        Ok("demo-scheduler:8786")
    );
    assert!(
        net.rewrite("http://demo-scheduler.analytics.svc:8787")
            .is_err()
    );
    assert_eq!(net.resolve("demo-scheduler"), None);
}

/// The cluster network of the test node: a Service's name resolves to a
/// stable address, and connections there reach a ready pod of the Service,
/// on the port its `targetPort` names, or are refused while it has none.
#[tokio::test(flavor = "multi_thread")]
async fn service_names_resolve_to_an_address_that_forwards_to_a_ready_pod() {
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, Service, ServicePort,
        ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let net = ClusterNet::new("team");
    let pod_ip = net.allocate_pod_ip();
    let listener = tokio::net::TcpListener::bind((pod_ip, 0))
        .await
        .expect("listen on the pod's address");
    let pod_port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let _ = c.write_all(b"hello from the pod").await;
        }
    });
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    // The Service has a loopback address of its own: any port is free there.
    let service_port = 8000;
    let service = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels.clone()),
            ports: Some(vec![ServicePort {
                port: i32::from(service_port),
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pod = |ready: &str| Pod {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: i32::from(pod_port),
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(pod_ip.to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    };
    let read = |addr: SocketAddr| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut got))
            .await
            .expect("an answer or a close in time")
            .map(|_| got)
            .unwrap_or_default()
    };

    net.update(vec![service.clone()], vec![pod("True")]);
    let ip = net.resolve("web").expect("the Service's address");
    for name in ["web.team", "web.team.svc", "web.team.svc.cluster.local."] {
        assert_eq!(net.resolve(name), Some(ip), "{name}");
    }
    assert_eq!(net.resolve("web.other.svc"), None);
    assert_eq!(
        net.rewrite(&format!("web:{service_port}")),
        Ok(format!("{ip}:{service_port}"))
    );
    assert_eq!(
        net.rewrite("http://web.team.svc:1/x?y=web-2"),
        Ok(format!("http://{ip}:1/x?y=web-2"))
    );
    let service_addr = SocketAddr::from((ip, service_port));
    assert_eq!(read(service_addr).await, "hello from the pod");

    // A pod that is not ready gets no connections: with no ready endpoint
    // the Service refuses them, as kube-proxy does, until one is ready again.
    net.update(vec![service.clone()], vec![pod("False")]);
    let refused = async {
        loop {
            match tokio::net::TcpStream::connect(service_addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // The listener closes as its task ends, a moment later.
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("connections refused once no pod is ready");
    net.update(vec![service], vec![pod("True")]);
    assert_eq!(read(service_addr).await, "hello from the pod");
}
