//! The test node's kubelet endpoints (`harness::kubelet`), reached the way
//! users reach a pod's ports and logs: through the real API server's
//! `pods/portforward` and `pods/log` subresources, with kube-rs.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::install::start_node;
use harness::kube::{ControlPlane, require_tools, wait_for};
use harness::net::pod_ready;
use harness::pod_env::Image;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, Pod, PodSpec, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{LogParams, Portforwarder, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "team";
const POD: &str = "scheduler-0";
const IMAGE: &str = "ghcr.io/daskrs/daskrs";
const WAIT: Duration = Duration::from_secs(120);

/// A `daskrs scheduler` pod, ready once its `/health` answers on 8787.
fn scheduler_pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(POD.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "scheduler".into(),
                image: Some(format!("{IMAGE}:test")),
                args: Some(vec!["scheduler".into(), "--host".into(), "0.0.0.0".into()]),
                // Its configuration too, so that the log has lines to tail.
                env: Some(vec![EnvVar {
                    name: "DASKRS_LOG".into(),
                    value: Some("info".into()),
                    ..EnvVar::default()
                }]),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8787,
                    ..ContainerPort::default()
                }]),
                readiness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some("/health".into()),
                        port: IntOrString::String("http".into()),
                        ..HTTPGetAction::default()
                    }),
                    ..Probe::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// `GET /health` over a port-forward to the pod's 8787, through the API
/// server: the whole answer.
async fn health_through_a_port_forward(pods: &Api<Pod>) -> String {
    let mut forward = pods
        .portforward(POD, &[8787])
        .await
        .expect("a port-forward to 8787");
    let mut stream = forward.take_stream(8787).expect("the stream of 8787");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer))
        .await
        .expect("the answer, and the end of the forwarded connection, in time")
        .expect("read the answer");
    drop(stream);
    ended(forward).await;
    answer
}

/// Waits for a port-forward to end. Once its streams are dropped, kube-rs
/// sends a close of its own even after the server's close, which
/// tungstenite refuses (`SendAfterClosing`): with a server that closes
/// first, as the kubelet does once every port has ended, that error is how
/// a forward ends.
async fn ended(forward: Portforwarder) {
    let result = tokio::time::timeout(WAIT, forward.join())
        .await
        .expect("the port-forward ends in time");
    if let Err(e) = result {
        assert!(
            format!("{e:?}").contains("SendAfterClosing"),
            "the port-forward ends with: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_on_the_test_node_forwards_ports_and_serves_logs_through_the_api_server() {
    require_tools();
    let plane = ControlPlane::start(
        std::env::temp_dir().join(format!("daskrs-kubelet-{}", std::process::id())),
    );
    let client = plane.client().await;
    plane.kubectl_ok(&["create", "namespace", NS]);
    let agent = start_node(
        &plane,
        &client,
        NS,
        vec![Image::daskrs(IMAGE, Path::new(harness::BIN))],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &scheduler_pod())
        .await
        .expect("create the scheduler pod");
    let diag = || format!("{}{}", agent.logs("", 40), plane.logs(40));
    let pod_ip = wait_for("the scheduler pod to be ready", WAIT, &diag, || async {
        let pod = pods.get(POD).await.ok()?;
        pod_ready(&pod).then_some(())?;
        pod.status?.pod_ip
    })
    .await;

    // A port-forward, then two at once: each carries its own HTTP exchange.
    let answer = health_through_a_port_forward(&pods).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "GET /health through a port-forward: {answer:?}"
    );
    let (a, b) = tokio::join!(
        health_through_a_port_forward(&pods),
        health_through_a_port_forward(&pods)
    );
    for answer in [a, b] {
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
            "GET /health through one of two port-forwards at once: {answer:?}"
        );
    }

    // A port nothing listens on: an error on the port's error channel, and
    // the forward ends.
    let mut forward = pods
        .portforward(POD, &[9])
        .await
        .expect("a port-forward to 9");
    let error = forward.take_error(9).expect("the error of 9");
    let error = tokio::time::timeout(WAIT, error)
        .await
        .expect("an error in time, not a hang")
        .expect("an error message");
    assert!(
        error.contains("port 9") && error.contains("refused"),
        "the error of a forward to a closed port: {error}"
    );
    ended(forward).await;

    // The container's log, whole and its last line.
    let logs = pods
        .logs(POD, &LogParams::default())
        .await
        .expect("the pod's log");
    let started = format!("scheduler listening on {pod_ip}:8786");
    assert!(
        logs.contains(&started) && logs.lines().count() > 1,
        "the pod's log: {logs:?}"
    );
    let last = pods
        .logs(
            POD,
            &LogParams {
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .expect("the last line of the pod's log");
    assert_eq!(
        last.lines().count(),
        1,
        "tailLines=1 gives one line: {last:?}"
    );
    assert!(logs.ends_with(&last), "{last:?} ends {logs:?}");
}
