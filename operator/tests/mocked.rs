//! Reconcile passes against a mocked Kubernetes API (tower-test): which
//! requests one pass makes, in which order, with what, and what it does
//! with the answers. The real API server is in `tests/kube.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::{Client, Resource};
use serde_json::{Value, json};

use daskrs_operator::builders::{self, Defaults, WorkerSizing};
use daskrs_operator::crd::{DaskCluster, DaskClusterSpec, DaskClusterStatus, TlsSpec, WorkerSpec};
use daskrs_operator::metrics::Metrics;
use daskrs_operator::reconcile::{Context, Error, Settings, error_policy, reconcile};
use daskrs_operator::scheduler_api::{Adaptive, ApiError, SchedulerApi, SchedulerAt};

/// The scheduler's API: retires the workers it is told it holds.
#[derive(Default)]
struct FakeScheduler {
    workers: Mutex<Vec<String>>,
    calls: Mutex<Vec<(Vec<String>, usize)>>,
}

#[async_trait::async_trait]
impl SchedulerApi for FakeScheduler {
    async fn adaptive(&self, _at: &SchedulerAt) -> Result<Adaptive, ApiError> {
        Ok(Adaptive::default())
    }

    async fn retire(
        &self,
        at: &SchedulerAt,
        names: &[String],
        count: usize,
    ) -> Result<Vec<String>, ApiError> {
        // The Secret's token, as the mocked API server holds it.
        assert_eq!(at.token, TOKEN, "retire calls carry the cluster's token");
        self.calls.lock().unwrap().push((names.to_vec(), count));
        let mut w = self.workers.lock().unwrap();
        let chosen: Vec<String> = if names.is_empty() {
            w.iter().take(count).cloned().collect()
        } else {
            names.to_vec()
        };
        w.retain(|n| !chosen.contains(n));
        Ok(chosen)
    }
}

/// How the mocked API server answers.
#[derive(Clone, Default)]
struct World {
    /// Worker pods a list returns.
    pods: Vec<Value>,
    /// The scheduler Deployment is available.
    scheduler_available: bool,
    /// Answer a Deployment patch with this status code instead.
    deployment_error: Option<u16>,
    /// The cluster's token Secret exists, holding [`TOKEN`].
    token_secret: bool,
    /// Other Secrets there are.
    secrets: Vec<Value>,
}

const TOKEN: &str = "the-clusters-token";

/// Bytes as the API server writes them in a Secret's data.
fn base64(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

fn cluster(replicas: i32) -> DaskCluster {
    let mut c = DaskCluster::new(
        "demo",
        DaskClusterSpec {
            image: None,
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            scheduler: Default::default(),
            worker: WorkerSpec {
                replicas,
                threads: None,
                memory_limit: None,
                resources: None,
                pod: Default::default(),
            },
            autoscaling: None,
            s3: None,
            idle_timeout: None,
            // TLS has a test of its own, below.
            tls: Some(TlsSpec {
                enabled: false,
                issuer_ref: None,
            }),
        },
    );
    c.meta_mut().namespace = Some("data".into());
    c.meta_mut().uid = Some("uid-1".into());
    c.meta_mut().generation = Some(1);
    c
}

fn pod(name: &str, hash: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "data",
            "labels": { "daskrs.dev/cluster": "demo", "daskrs.dev/role": "worker", "daskrs.dev/template-hash": hash } },
        "spec": { "containers": [{ "name": "worker" }] },
        "status": { "phase": "Running", "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
    })
}

fn answer(world: &World, method: &str, uri: &str, body: &Value, made: &mut u32) -> (u16, Value) {
    let path = uri.split('?').next().unwrap_or_default();
    if path.contains("/deployments/") {
        if let Some(code) = world.deployment_error {
            return (
                code,
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd is down", "reason": "InternalError", "code": code }),
            );
        }
        let mut d = body.clone();
        d["status"] = if world.scheduler_available {
            json!({ "availableReplicas": 1 })
        } else {
            json!({})
        };
        return (200, d);
    }
    if path.ends_with("/status") {
        let c = json!({
            "apiVersion": "daskrs.dev/v1alpha1", "kind": "DaskCluster",
            "metadata": { "name": "demo", "namespace": "data" },
            "spec": { "worker": { "replicas": 1 } },
            "status": body["status"],
        });
        return (200, c);
    }
    if path.contains("/secrets") {
        let name = path.rsplit('/').next().unwrap_or_default();
        let found = world.secrets.iter().find(|s| s["metadata"]["name"] == name);
        if let (Some(s), "GET") = (found, method) {
            return (200, s.clone());
        }
        let token = world.token_secret && name == "demo-daskrs-token";
        return match (method, token) {
            ("GET", true) => (
                200,
                json!({ "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": "demo-daskrs-token", "namespace": "data",
                        "ownerReferences": [{ "apiVersion": "daskrs.dev/v1alpha1", "kind": "DaskCluster",
                            "name": "demo", "uid": "uid-1", "controller": true }] },
                    "data": { "token": base64(TOKEN) } }),
            ),
            ("GET", false) => (
                404,
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404 }),
            ),
            ("POST", _) => (201, body.clone()),
            ("PUT", _) if found.is_some() => (200, body.clone()),
            _ => (405, json!({})),
        };
    }
    if path.contains("/services/") || path.contains("/networkpolicies/") {
        return (200, body.clone());
    }
    if path.contains("/events") {
        return (201, body.clone());
    }
    if path.contains("/pods") {
        return match method {
            "GET" => (
                200,
                json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": world.pods }),
            ),
            "POST" => {
                *made += 1;
                let mut p = body.clone();
                p["metadata"]["name"] = json!(format!("demo-worker-new{made}"));
                (201, p)
            }
            "DELETE" => (
                200,
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }),
            ),
            _ => (405, json!({})),
        };
    }
    (
        404,
        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404 }),
    )
}

/// Runs one reconcile pass against the mocked API; returns its result and
/// the requests it made.
async fn pass(
    c: DaskCluster,
    world: World,
    scheduler: Arc<FakeScheduler>,
) -> (Result<Action, Error>, Vec<Seen>, Arc<Context>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = tokio::spawn(async move {
        let mut made = 0;
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().to_string();
            let content_type = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = answer(&world, &method, &path, &body, &mut made);
            log.lock().unwrap().push(Seen {
                method,
                path,
                content_type,
                body,
            });
            send.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = Client::new(service, "data");
    let reporter = Reporter {
        controller: "daskrs-operator".into(),
        instance: None,
    };
    let ctx = Arc::new(Context::new(
        client,
        Settings {
            defaults: Defaults {
                image: "daskrs:test".into(),
                worker_image: None,
                network_policies: true,
                operator_namespace: None,
            },
            scheduler_url: "http://scheduler".into(),
            scale_down_delay: Duration::from_secs(60),
        },
        scheduler,
        reporter,
        Metrics::new(),
    ));
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(c), ctx.clone()))
        .await
        .expect("a pass finishes");
    server.abort();
    let seen = seen.lock().unwrap().clone();
    (result, seen, ctx)
}

fn requests(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path.split('?').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_new_cluster_applies_its_scheduler_creates_its_workers_and_writes_status() {
    let (result, seen, _) = pass(cluster(2), World::default(), Arc::default()).await;
    result.expect("the pass succeeds");
    let r = requests(&seen);
    assert_eq!(r[0], "GET /api/v1/namespaces/data/pods");
    // The cluster's token Secret, made since there was none.
    assert_eq!(
        r[1..3],
        [
            "GET /api/v1/namespaces/data/secrets/demo-daskrs-token",
            "POST /api/v1/namespaces/data/secrets"
        ]
    );
    let made = seen
        .iter()
        .find(|s| s.method == "POST" && s.path.contains("/secrets"))
        .unwrap();
    let token = made.body["data"]["token"].as_str().unwrap();
    assert_eq!(
        token.len(),
        88,
        "32 random bytes as hex, base64-encoded: {token}"
    );
    let r = [&r[..1], &r[3..]].concat();
    assert_eq!(
        r[1],
        "PATCH /api/v1/namespaces/data/services/demo-scheduler"
    );
    assert_eq!(
        r[2],
        "PATCH /apis/networking.k8s.io/v1/namespaces/data/networkpolicies/demo-daskrs"
    );
    assert_eq!(
        r[3],
        "PATCH /apis/apps/v1/namespaces/data/deployments/demo-scheduler"
    );
    assert_eq!(
        r.iter()
            .filter(|x| *x == "POST /api/v1/namespaces/data/pods")
            .count(),
        2
    );
    assert!(
        r.iter()
            .any(|x| x.starts_with("POST /apis/events.k8s.io/v1/namespaces/data/events")),
        "{r:?}"
    );
    assert_eq!(
        r.last().unwrap(),
        "PATCH /apis/daskrs.dev/v1alpha1/namespaces/data/daskclusters/demo/status"
    );

    // The scheduler and the status: server-side apply, one field manager,
    // forced.
    for applied in [&seen[3], &seen[4], seen.last().unwrap()] {
        assert!(
            applied.path.contains("fieldManager=daskrs-operator")
                && applied.path.contains("force=true")
                && applied.content_type == "application/apply-patch+yaml",
            "{} ({})",
            applied.path,
            applied.content_type
        );
    }
    assert!(
        seen[0]
            .path
            .contains("labelSelector=daskrs.dev%2Fcluster%3Ddemo%2Cdaskrs.dev%2Frole%3Dworker"),
        "{}",
        seen[0].path
    );
    let created = seen
        .iter()
        .find(|s| s.method == "POST" && s.path.contains("/pods"))
        .unwrap();
    assert_eq!(created.body["metadata"]["generateName"], "demo-worker-");
    assert_eq!(
        created.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
    let applied = &seen.last().unwrap().body;
    assert_eq!(applied["apiVersion"], "daskrs.dev/v1alpha1");
    assert_eq!(applied["kind"], "DaskCluster");
    let status = &applied["status"];
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["readyReplicas"], 0);
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 1);
}

#[tokio::test]
async fn scale_down_deletes_unready_pods_first_then_what_the_scheduler_retires() {
    let c = cluster(1);
    // What validation resolves for a cluster without resources.
    let sizing = WorkerSizing {
        threads: 1,
        memory_limit: None,
    };
    let template = builders::worker_pod(
        &c,
        &Defaults {
            image: "daskrs:test".into(),
            worker_image: None,
            network_policies: true,
            operator_namespace: None,
        },
        &sizing,
    );
    let hash = builders::pod_template_hash(&template).unwrap().to_string();
    let world = World {
        pods: vec![
            pod("demo-worker-a", &hash, true),
            pod("demo-worker-b", &hash, true),
            pod("demo-worker-c", &hash, false),
        ],
        scheduler_available: true,
        token_secret: true,
        ..World::default()
    };
    let scheduler = Arc::new(FakeScheduler::default());
    *scheduler.workers.lock().unwrap() = vec!["demo-worker-b".into(), "demo-worker-a".into()];
    let (result, seen, _) = pass(c, world, scheduler.clone()).await;
    result.expect("the pass succeeds");
    let deleted: Vec<String> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| {
            s.path
                .split('?')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = deleted.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["demo-worker-b", "demo-worker-c"]);
    assert_eq!(
        *scheduler.calls.lock().unwrap(),
        vec![(vec![], 1)],
        "one worker retired through the scheduler"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "POST" && s.path.contains("/pods"))
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["replicas"], 1);
}

#[tokio::test]
async fn stale_pods_are_replaced_before_they_are_retired() {
    let c = cluster(2);
    let world = World {
        pods: vec![
            pod("demo-worker-a", "old", true),
            pod("demo-worker-b", "old", true),
        ],
        scheduler_available: true,
        token_secret: true,
        ..World::default()
    };
    let scheduler = Arc::new(FakeScheduler::default());
    let (result, seen, _) = pass(c, world, scheduler.clone()).await;
    result.expect("the pass succeeds");
    assert_eq!(
        seen.iter()
            .filter(|s| s.method == "POST" && s.path.contains("/pods"))
            .count(),
        2
    );
    assert!(
        !seen.iter().any(|s| s.method == "DELETE"),
        "stale pods deleted before new ones were ready"
    );
    assert!(scheduler.calls.lock().unwrap().is_empty());
    assert_eq!(seen.last().unwrap().body["status"]["phase"], "Scaling");
}

#[tokio::test]
async fn api_errors_fail_the_pass_and_back_off_exponentially() {
    let world = World {
        deployment_error: Some(500),
        token_secret: true,
        ..World::default()
    };
    let (result, seen, ctx) = pass(cluster(2), world, Arc::default()).await;
    let err = result.expect_err("the pass fails");
    assert!(err.to_string().contains("etcd is down"), "{err}");
    assert!(
        !seen.iter().any(|s| s.method == "POST"),
        "no pods made after a failed step"
    );
    let c = Arc::new(cluster(2));
    let actions: Vec<Action> = (0..4)
        .map(|_| error_policy(c.clone(), &err, ctx.clone()))
        .collect();
    let expected: Vec<Action> = [1, 2, 4, 8]
        .map(|s| Action::requeue(Duration::from_secs(s)))
        .into();
    assert_eq!(actions, expected);
}

/// The Events a pass published: (reason, note).
fn events(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.contains("/events"))
        .map(|s| {
            (
                s.body["reason"].as_str().unwrap_or_default().to_string(),
                s.body["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn with_memory_limit(mut c: DaskCluster, limit: &str) -> DaskCluster {
    c.spec.worker.memory_limit = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        limit.into(),
    ));
    c
}

#[tokio::test]
async fn an_invalid_spec_is_reported_in_status_and_an_event_and_waits_for_an_edit() {
    let c = with_memory_limit(cluster(2), "4Gb");
    let (result, seen, _) = pass(c, World::default(), Arc::default()).await;
    let action = result.expect("an invalid spec is not an error to retry");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        requests(&seen),
        vec![
            "GET /api/v1/namespaces/data/pods",
            "PATCH /apis/daskrs.dev/v1alpha1/namespaces/data/daskclusters/demo/status",
            "POST /apis/events.k8s.io/v1/namespaces/data/events",
        ],
        "nothing applied, no pod made"
    );
    let status_patch = &seen[1];
    assert!(
        status_patch.path.contains("fieldManager=daskrs-operator")
            && status_patch.content_type == "application/apply-patch+yaml",
        "{}",
        status_patch.path
    );
    let status = &status_patch.body["status"];
    assert_eq!(status["phase"], "Failed");
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "SpecValid");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "InvalidSpec");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("spec.worker.memoryLimit") && message.contains("4Gb"),
        "{message}"
    );
    let events = events(&seen);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "InvalidSpec");
    assert!(
        events[0].1.contains("spec.worker.memoryLimit"),
        "{:?}",
        events[0]
    );
}

#[tokio::test]
async fn an_invalid_spec_already_reported_for_this_generation_is_not_reported_again() {
    let c = with_memory_limit(cluster(2), "4Gb");
    let (_, first, _) = pass(c.clone(), World::default(), Arc::default()).await;
    let written: DaskClusterStatus =
        serde_json::from_value(first[1].body["status"].clone()).expect("a status");
    let mut reported = c;
    reported.status = Some(written);
    let (result, seen, _) = pass(reported, World::default(), Arc::default()).await;
    assert_eq!(result.expect("the pass succeeds"), Action::await_change());
    assert_eq!(
        requests(&seen),
        vec!["GET /api/v1/namespaces/data/pods"],
        "no status rewrite and no second Event"
    );
}

#[tokio::test]
async fn a_fixed_spec_is_acted_on_and_marked_valid() {
    let c = with_memory_limit(cluster(2), "4Gb");
    let (_, first, _) = pass(c.clone(), World::default(), Arc::default()).await;
    let mut fixed = with_memory_limit(c, "4Gi");
    fixed.status = serde_json::from_value(first[1].body["status"].clone()).ok();
    fixed.meta_mut().generation = Some(2);
    let (result, seen, _) = pass(fixed, World::default(), Arc::default()).await;
    result.expect("the pass succeeds");
    let created = seen
        .iter()
        .find(|s| s.method == "POST" && s.path.contains("/pods"))
        .expect("worker pods made");
    let env = created.body["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "DASKRS_MEMORY_LIMIT" && e["value"] == "4294967296"),
        "{env:?}"
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["conditions"][0]["type"], "SpecValid");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["observedGeneration"], 2);
}

#[tokio::test]
async fn tls_secrets_are_made_once_and_a_certificate_renewed_when_due() {
    let mut c = cluster(1);
    c.spec.tls = None; // on by default
    let world = World {
        token_secret: true,
        scheduler_available: true,
        ..World::default()
    };
    let (result, seen, _) = pass(c.clone(), world.clone(), Arc::default()).await;
    result.expect("the pass succeeds");
    let r = requests(&seen);
    for name in ["demo-daskrs-ca", "demo-daskrs-tls", "demo-daskrs-client"] {
        let get = format!("GET /api/v1/namespaces/data/secrets/{name}");
        assert!(r.contains(&get), "{r:?}");
    }
    let made: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "POST" && s.path.contains("/secrets"))
        .collect();
    let names: Vec<&str> = made
        .iter()
        .map(|s| s.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["demo-daskrs-ca", "demo-daskrs-tls", "demo-daskrs-client"]
    );
    let (ca, server, client) = (&made[0].body, &made[1].body, &made[2].body);
    assert_eq!(ca["immutable"], true);
    assert!(ca["data"]["ca.key"].is_string() && ca["data"]["ca.crt"].is_string());
    for cert in [server, client] {
        assert_eq!(cert["type"], "kubernetes.io/tls");
        assert_eq!(cert["data"]["ca.crt"], ca["data"]["ca.crt"]);
        assert!(cert["data"]["tls.key"].is_string());
        assert_eq!(cert["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    }
    let not_after: u64 = server["metadata"]["annotations"][builders::NOT_AFTER]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(not_after > now + 89 * 86_400, "{not_after}");
    // The worker pod mounts the certificate and is told where.
    let pod = seen
        .iter()
        .find(|s| s.method == "POST" && s.path.contains("/pods"))
        .unwrap();
    let volumes = pod.body["spec"]["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "demo-daskrs-tls"),
        "{volumes:?}"
    );
    let env = pod.body["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "DASKRS_TLS_DIR" && e["value"] == builders::TLS_DIR),
        "{env:?}"
    );

    // A later pass: the authority stays, the client certificate is not
    // due, the server's has ten days left and is issued anew in place.
    let mut due = server.clone();
    due["metadata"]["annotations"][builders::NOT_AFTER] = json!((now + 10 * 86_400).to_string());
    let later = World {
        secrets: vec![ca.clone(), due, client.clone()],
        ..world
    };
    let (result, seen, _) = pass(c, later, Arc::default()).await;
    result.expect("the pass succeeds");
    let written: Vec<String> = requests(&seen)
        .into_iter()
        .filter(|r| r.contains("/secrets") && !r.starts_with("GET"))
        .collect();
    assert_eq!(
        written,
        ["PUT /api/v1/namespaces/data/secrets/demo-daskrs-tls"]
    );
    let renewed = &seen.iter().find(|s| s.method == "PUT").unwrap().body;
    assert_eq!(renewed["data"]["ca.crt"], ca["data"]["ca.crt"]);
    assert_ne!(renewed["data"]["tls.crt"], server["data"]["tls.crt"]);
    assert!(
        seen.iter().any(|s| s.path.contains("/events")
            && s.body["note"]
                .as_str()
                .is_some_and(|n| n.contains("renewed the server certificate"))),
        "an Event says the certificate was renewed"
    );
}

#[tokio::test]
async fn an_issuer_without_cert_manager_installed_fails_the_pass_saying_so() {
    let mut c = cluster(1);
    c.spec.tls = Some(TlsSpec {
        enabled: true,
        issuer_ref: Some(daskrs_operator::crd::IssuerRef {
            name: "team-ca".into(),
            kind: None,
            group: None,
        }),
    });
    let world = World {
        token_secret: true,
        scheduler_available: true,
        ..World::default()
    };
    // The mocked API server serves no cert-manager.io kinds: 404.
    let (result, seen, _) = pass(c, world, Arc::default()).await;
    let error = result.expect_err("the pass fails").to_string();
    assert!(
        error.contains("does not serve cert-manager.io/v1 Certificates; install cert-manager"),
        "{error}"
    );
    let r = requests(&seen);
    assert!(
        r.contains(
            &"PATCH /apis/cert-manager.io/v1/namespaces/data/certificates/demo-daskrs-tls"
                .to_string()
        ),
        "{r:?}"
    );
    // No authority of the operator's, no pod of a cluster without certificates.
    assert!(!r.iter().any(|r| r.contains("demo-daskrs-ca")), "{r:?}");
    assert!(
        !r.iter()
            .any(|r| r.starts_with("POST") && r.contains("/pods")),
        "{r:?}"
    );
    assert!(
        events(&seen)
            .iter()
            .any(|(reason, _)| reason == "CertManagerMissing"),
        "{:?}",
        events(&seen)
    );
}
