//! HTTP on port 8787: the dashboard (`/`), `/health`, `/ready`, `/metrics`,
//! the cluster's state as JSON (`/api/v1/status`, which the dashboard
//! polls), and the API the operator uses (`/api/v1/workers`,
//! `/api/v1/retire`, `/api/v1/adaptive`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::service::Core;
use crate::service::client::{cluster_info, retire_and_wait};

#[derive(Serialize)]
struct WorkerJson {
    id: u64,
    name: String,
    address: String,
    nthreads: u32,
    memory_limit: u64,
    memory_bytes: u64,
    spilled_bytes: u64,
    processing: u32,
    held_results: u64,
    status: String,
    executed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    #[serde(default)]
    workers: Vec<String>,
    #[serde(default)]
    count: usize,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/status", get(status))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/retire", post(retire))
        .route("/api/v1/adaptive", get(adaptive))
        .with_state(core)
}

/// One page, no outside resources: it polls `/api/v1/status`.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> impl IntoResponse {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-cache"),
            (
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        DASHBOARD,
    )
}

/// Workers, graphs with their progress, tasks by state, and totals.
async fn status(AxState(core): AxState<Arc<Core>>) -> Json<serde_json::Value> {
    use daskrs_core::TaskState;
    let info = cluster_info(&core);
    let g = core.lock();
    let s = &g.state;
    let mut graphs: Vec<_> = s.graphs.values().collect();
    graphs.sort_by_key(|g| g.id);
    let graphs: Vec<serde_json::Value> = graphs
        .iter()
        .map(|gr| {
            let count = |st: TaskState| gr.counts[st as usize];
            serde_json::json!({
                "id": gr.id,
                "name": gr.name,
                "total": gr.keys.len(),
                "done": gr.n_done,
                "processing": count(TaskState::Processing),
                "waiting": count(TaskState::Waiting) + count(TaskState::Queued),
                "erred": count(TaskState::Erred),
                "finished": gr.finished,
            })
        })
        .collect();
    let t = &s.totals;
    Json(serde_json::json!({
        "version": info.scheduler_version,
        "workers": info.workers.iter().map(|w| serde_json::json!({
            "id": w.id,
            "name": w.name,
            "address": w.address,
            "nthreads": w.nthreads,
            "memory_limit": w.memory_limit,
            "memory_bytes": w.memory_bytes,
            "spilled_bytes": w.spilled_bytes,
            "processing": w.processing,
            "held_results": w.held_results,
            "status": w.status,
            "executed": w.executed,
            "kinds": w.kinds,
        })).collect::<Vec<_>>(),
        "no_worker": info.no_worker.iter().map(|k| serde_json::json!({
            "kind": k.kind,
            "tasks": k.tasks,
            "reason": format!("{} tasks wait for a worker that runs {:?} tasks; none of the cluster's workers does", k.tasks, k.kind),
        })).collect::<Vec<_>>(),
        "graphs": graphs,
        "tasks": info.tasks.iter().map(|c| (c.state.clone(), c.count)).collect::<std::collections::BTreeMap<_, _>>(),
        "bytes_held": s.bytes_held(),
        "totals": {
            "tasks_finished": t.tasks_finished,
            "tasks_erred": t.tasks_erred,
            "transfer_bytes": t.transfer_bytes,
            "workers_lost": t.workers_lost,
            "tasks_recomputed": t.tasks_recomputed,
            "steals": t.steals,
        },
    }))
}

async fn metrics(AxState(core): AxState<Arc<Core>>) -> impl IntoResponse {
    let g = core.lock();
    (
        [("content-type", "text/plain; version=0.0.4")],
        core.metrics.render(&g.state),
    )
}

async fn workers(AxState(core): AxState<Arc<Core>>) -> Json<Vec<WorkerJson>> {
    let info = cluster_info(&core);
    Json(
        info.workers
            .into_iter()
            .map(|w| WorkerJson {
                id: w.id,
                name: w.name,
                address: w.address,
                nthreads: w.nthreads,
                memory_limit: w.memory_limit,
                memory_bytes: w.memory_bytes,
                spilled_bytes: w.spilled_bytes,
                processing: w.processing,
                held_results: w.held_results,
                status: w.status,
                executed: w.executed,
            })
            .collect(),
    )
}

async fn retire(
    AxState(core): AxState<Arc<Core>>,
    body: Result<Json<RetireBody>, axum::extract::rejection::JsonRejection>,
) -> impl IntoResponse {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": e.body_text() })),
            );
        }
    };
    if body.workers.is_empty() && body.count == 0 {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "name `workers` or a `count` to retire" })),
        );
    }
    let timeout = Duration::from_secs(body.timeout_seconds.unwrap_or(60));
    match retire_and_wait(&core, &body.workers, body.count, timeout).await {
        Ok(retired) => (
            StatusCode::OK,
            Json(serde_json::json!({ "retired": retired })),
        ),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": e })),
        ),
    }
}

async fn adaptive(AxState(core): AxState<Arc<Core>>) -> Json<serde_json::Value> {
    let g = core.lock();
    let s = &g.state;
    Json(serde_json::json!({
        "desired_workers": s.desired_workers(crate::ADAPTIVE_TARGET_SECONDS),
        "current_workers": s.workers.len(),
        "tasks_waiting": s.count(daskrs_core::TaskState::Waiting) + s.count(daskrs_core::TaskState::Queued),
        "tasks_processing": s.count(daskrs_core::TaskState::Processing),
        "idle_seconds": s.idle_for().as_secs_f64(),
    }))
}

pub async fn serve(
    addr: SocketAddr,
    core: Arc<Core>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(core);
    Ok((
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }),
        bound,
    ))
}
