//! Operator metrics, served with `/health` and `/ready` on port 8080.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_seconds: Histogram,
    pods_created: IntCounter,
    pods_deleted: IntCounter,
    leader: IntGauge,
    ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "daskrs_operator_reconciles_total",
                "Reconcile passes by result (ok, error)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "daskrs_operator_reconcile_duration_seconds",
                "Time of one reconcile pass",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        let pods_created = IntCounter::new(
            "daskrs_operator_worker_pods_created_total",
            "Worker pods created",
        )
        .expect("valid metric");
        let pods_deleted = IntCounter::new(
            "daskrs_operator_worker_pods_deleted_total",
            "Worker pods deleted (scale-down, rollout, ended)",
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "daskrs_operator_leader",
            "1 while this replica holds the leader lease",
        )
        .expect("valid metric");
        for m in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_seconds.clone()),
            Box::new(pods_created.clone()),
            Box::new(pods_deleted.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Arc::new(Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            pods_created,
            pods_deleted,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.reconciles
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn pods_created(&self, n: usize) {
        self.pods_created.inc_by(n as u64);
    }

    pub fn pods_deleted(&self, n: usize) {
        self.pods_deleted.inc_by(n as u64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Ready once the operator has connected to the API server.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("metrics text is UTF-8")
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not connected yet\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([("content-type", "text/plain; version=0.0.4")], m.render()).into_response()
            }),
        )
        .with_state(metrics)
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
