//! HTTP on port 8787: the dashboard (`/`), `/health`, `/ready`, `/metrics`,
//! the cluster's state as JSON (`/api/v1/status`, `/api/v1/task-stream`
//! and `/api/v1/memory`, which the dashboard polls), and the API the
//! operator uses (`/api/v1/workers`,
//! `/api/v1/retire`, `/api/v1/adaptive`).
//!
//! With a cluster token, everything but `/health` and `/ready` (and
//! `/metrics` when opened for scrapers) needs it: as `Authorization: Bearer`
//! for programs, or, in a browser, typed once into the dashboard's login
//! form (or passed as `/?token=`), which keeps it in an HTTP-only cookie.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State as AxState};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use daskrs_proto::auth::{Refusal, Token, check_http, cookie_name};
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

/// The routes; with a token, behind [`guard`].
pub fn router(core: Arc<Core>, token: Option<Token>, open_metrics: bool) -> Router {
    let app = routes(core);
    match token {
        None => app,
        Some(token) => app.layer(axum::middleware::from_fn_with_state(
            Arc::new(Access {
                token,
                open_metrics,
            }),
            guard,
        )),
    }
}

struct Access {
    token: Token,
    open_metrics: bool,
}

/// Longest login form accepted.
const MOST_LOGIN_BYTES: usize = 4096;

/// Lets a request through when it carries the token or needs none; logs a
/// browser in; refuses the rest with a reason.
async fn guard(AxState(access): AxState<Arc<Access>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let cookie = cookie_name(req.headers().get(header::HOST).map(|h| h.as_bytes()));
    let path = path.as_str();
    let open = matches!(path, "/health" | "/ready") || (path == "/metrics" && access.open_metrics);
    if open {
        return next.run(req).await;
    }
    let refusal = match check_http(req.headers(), &access.token) {
        Ok(()) => return next.run(req).await,
        Err(r) => r,
    };
    // A browser logging in: the login form's POST, or `/?token=` as printed.
    let presented = if path == "/login" && req.method() == Method::POST {
        let body = axum::body::to_bytes(req.into_body(), MOST_LOGIN_BYTES)
            .await
            .unwrap_or_default();
        Some(form_token(&body))
    } else if path == "/" {
        req.uri()
            .query()
            .and_then(|q| form_token(q.as_bytes()))
            .map(Some)
    } else {
        None
    };
    match presented {
        Some(Some(t)) if access.token.matches(t.as_bytes()) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (
                    header::SET_COOKIE,
                    format!(
                        "{cookie}={}; Path=/; HttpOnly; SameSite=Strict",
                        access.token.cookie_value()
                    ),
                ),
            ],
        )
            .into_response(),
        Some(_) => login_page(Refusal::Wrong),
        None if path == "/" => login_page(refusal),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{refusal}\n"),
        )
            .into_response(),
    }
}

/// The `token` field of a form or query string, if it has one.
fn form_token(form: &[u8]) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn login_page(refusal: Refusal) -> Response {
    let note = match refusal {
        Refusal::Missing => "This cluster needs its token.",
        Refusal::Wrong => "That token is wrong for this cluster.",
    };
    let page = LOGIN.replace("{note}", note);
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        ],
        page,
    )
        .into_response()
}

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>daskrs: token</title>
<style>body{font:15px system-ui,sans-serif;margin:4em auto;max-width:28em}
input{font:inherit;width:100%;margin:.5em 0;padding:.3em}</style></head>
<body><h1>daskrs</h1><p>{note}</p>
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button type="submit">Open the dashboard</button></form>
<p>Find it where the cluster was started, or on Kubernetes in the cluster's Secret.</p>
</body></html>
"#;

fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/status", get(status))
        .route("/api/v1/task-stream", get(task_stream))
        .route("/api/v1/memory", get(memory))
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
            let (prefixes, omitted) = prefix_progress(gr);
            serde_json::json!({
                "id": gr.id,
                "name": gr.name,
                "total": gr.keys.len(),
                "done": gr.n_done,
                "processing": count(TaskState::Processing),
                "waiting": count(TaskState::Waiting) + count(TaskState::Queued),
                "erred": count(TaskState::Erred),
                "finished": gr.finished,
                "prefixes": prefixes,
                "prefixes_omitted": omitted,
                "queries": gr.queries.iter().rev().filter_map(|q| query_progress(gr, q)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let t = &s.totals;
    Json(serde_json::json!({
        "version": info.scheduler_version,
        "now": daskrs_core::clock::now(),
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

/// Prefixes shown per graph; a session may have thousands.
const MOST_PREFIXES: usize = 100;

/// A prefix's tasks by state, as the dashboard draws them.
fn prefix_counts(p: &crate::state::Prefix) -> serde_json::Value {
    use daskrs_core::TaskState;
    let count = |st: TaskState| p.counts[st as usize];
    let (total, running, erred) = (
        p.total(),
        count(TaskState::Processing),
        count(TaskState::Erred),
    );
    serde_json::json!({
        "total": total,
        "done": p.done,
        "running": running,
        "erred": erred,
        "waiting": total.saturating_sub(p.done + running + erred),
        "seconds": p.totals.seconds,
        "nbytes": p.totals.nbytes,
        "transfer_bytes": p.totals.transfer_bytes,
    })
}

/// Progress by task prefix, in the order the prefixes came: those with
/// work left first, at most [`MOST_PREFIXES`]; and how many were left out.
fn prefix_progress(g: &crate::state::Graph) -> (Vec<serde_json::Value>, usize) {
    let present = g.prefixes.iter().filter(|p| p.total() > 0);
    let (open, complete): (Vec<_>, Vec<_>) = present.partition(|p| p.done < p.total());
    let all = open.len() + complete.len();
    let shown = open
        .into_iter()
        .chain(complete)
        .take(MOST_PREFIXES)
        .map(|p| {
            let mut v = prefix_counts(p);
            v["name"] = p.name.as_ref().into();
            v
        })
        .collect::<Vec<_>>();
    let omitted = all - shown.len();
    (shown, omitted)
}

/// A query's stages as its plan describes them, each with its tasks'
/// progress; `None` once none of its tasks is left (a session released it).
fn query_progress(
    g: &crate::state::Graph,
    q: &crate::state::QueryInfo,
) -> Option<serde_json::Value> {
    let empty = crate::state::Prefix::empty();
    let found: Vec<_> = q
        .stages()
        .into_iter()
        .map(|(stage, tasks, plan)| {
            let p = g.prefix_named(&q.stage_prefix(stage)).unwrap_or(&empty);
            (stage, tasks, plan, p)
        })
        .collect();
    if found.iter().all(|(_, _, _, p)| p.total() == 0) {
        return None;
    }
    let finished = found.iter().all(|(_, tasks, _, p)| p.done >= *tasks);
    let stages: Vec<serde_json::Value> = found
        .into_iter()
        .map(|(stage, tasks, plan, p)| {
            let mut v = prefix_counts(p);
            v["stage"] = stage.into();
            v["tasks"] = tasks.into();
            v["plan"] = plan.into();
            v
        })
        .collect();
    Some(serde_json::json!({
        "keys": q.keys,
        "explain": q.explain,
        "stages": stages,
        "finished": finished,
    }))
}

#[derive(Deserialize)]
struct StreamQuery {
    /// Only records newer than this number.
    #[serde(default)]
    since: u64,
    /// Only records that ended in the last this many seconds.
    #[serde(default = "default_window")]
    seconds: f64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_window() -> f64 {
    300.0
}

fn default_limit() -> usize {
    20_000
}

/// The task stream's records that are new to the reader (see
/// [`crate::state::TaskStream`]), with the workers' names and threads.
async fn task_stream(
    AxState(core): AxState<Arc<Core>>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use crate::state::What;
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let now = daskrs_core::clock::now();
    // Copied out under the lock (the keys are shared, not copied), written
    // as JSON after it.
    let (records, last, workers) = {
        let g = core.lock();
        let s = &g.state;
        let records: Vec<crate::state::Record> = s
            .stream
            .after(q.since, now - q.seconds.max(0.0), q.limit)
            .cloned()
            .collect();
        let mut workers: Vec<_> = s.workers.values().collect();
        workers.sort_by_key(|w| w.id);
        let workers: Vec<serde_json::Value> = workers
            .iter()
            .map(|w| serde_json::json!({ "id": w.id, "name": w.name, "nthreads": w.nthreads }))
            .collect();
        (records, s.stream.last_seq(), workers)
    };
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| match &r.what {
            What::Task {
                key,
                prefix,
                thread,
                fetch,
                nbytes,
                transfer_bytes,
            } => serde_json::json!({
                "seq": r.seq, "kind": "task", "worker": r.worker, "thread": thread,
                "start": r.start, "stop": r.stop, "key": key.as_ref(), "prefix": prefix.as_ref(),
                "fetch": fetch.map(|(a, b)| [a, b]), "nbytes": nbytes, "transfer_bytes": transfer_bytes,
            }),
            What::Spill { bytes } => serde_json::json!({
                "seq": r.seq, "kind": "spill", "worker": r.worker,
                "start": r.start, "stop": r.stop, "nbytes": bytes,
            }),
        })
        .collect();
    Json(serde_json::json!({
        "run": run_id(),
        "now": now,
        "last": last,
        "workers": workers,
        "records": records,
    }))
    .into_response()
}

/// Tells this scheduler process from one before it, for readers of the
/// task stream: its records are numbered, and its clock starts, anew.
fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}-{nanos:x}", std::process::id())
    })
}

/// Each worker's memory over the last minutes: `[at, managed, spilled,
/// process]` per heartbeat, with its limit and pause threshold.
async fn memory(AxState(core): AxState<Arc<Core>>) -> Json<serde_json::Value> {
    let now = daskrs_core::clock::now();
    // Copied out under the lock, written as JSON after it.
    let mut workers: Vec<_> = core
        .lock()
        .state
        .workers
        .values()
        .map(|w| {
            let samples: Vec<_> = w.memory_history.iter().copied().collect();
            (w.id, w.name.clone(), w.memory_limit, w.pause_bytes, samples)
        })
        .collect();
    workers.sort_by_key(|w| w.0);
    Json(serde_json::json!({
        "now": now,
        "seconds": crate::state::MEMORY_HISTORY_SECONDS,
        "workers": workers.iter().map(|(id, name, limit, pause, samples)| serde_json::json!({
            "id": id,
            "name": name,
            "memory_limit": limit,
            "pause_bytes": pause,
            "samples": samples.iter()
                .map(|m| serde_json::json!([m.at, m.managed, m.spilled, m.process]))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    }))
}

fn bad_request(error: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
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
    token: Option<Token>,
    open_metrics: bool,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(core, token, open_metrics);
    Ok((
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }),
        bound,
    ))
}

#[cfg(test)]
mod fuzz {
    //! Fuzz target of the bodies the HTTP port decodes: the retire API's
    //! JSON and the dashboard's login form. No body may panic them.
    //! `cargo bolero test http::fuzz::bodies -p daskrs-scheduler` runs it
    //! for as long as asked.

    use daskrs_core::fuzz;

    use super::{RetireBody, form_token};
    use crate::state::{Registration, State, StateConfig};

    #[test]
    fn bodies() {
        let examples: [&[u8]; 4] = [
            br#"{"workers": ["w1", "w2"], "timeout_seconds": 30}"#,
            br#"{"count": 18446744073709551615}"#,
            b"token=a%20b%2B&next=%2F",
            b"token=&token=x+y",
        ];
        let mut state = State::new(StateConfig::default());
        for name in ["w1", "w2"] {
            state.add_worker(
                Registration {
                    name: name.into(),
                    address: format!("{name}:8788"),
                    nthreads: 1,
                    memory_limit: 1 << 30,
                    kinds: Vec::new(),
                    python: String::new(),
                },
                std::time::Instant::now(),
            );
        }
        bolero::check!()
            .with_type::<fuzz::Input>()
            .with_iterations(fuzz::inputs(20_000))
            .for_each(|input| {
                let body = fuzz::bytes(&examples, input);
                let _ = form_token(&body);
                if let Ok(b) = serde_json::from_slice::<RetireBody>(&body) {
                    // What `retire_and_wait` asks of the state, without retiring.
                    let _ = state.workers_to_close(b.count);
                    for w in &b.workers {
                        let _ = state.find_worker(w);
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use daskrs_core::TaskSpec;

    use super::query_progress;
    use crate::state::{State, StateConfig, Submission};

    /// A session's query is shown while its tasks are there, by stage, and
    /// no longer once the client let go of its answer.
    #[test]
    fn a_query_shows_until_its_answer_is_released() {
        let mut state = State::new(StateConfig::default());
        let g = state.open_session("s".into());
        let tasks = vec![
            TaskSpec::new("sql-7/s0.0", "noop"),
            TaskSpec::new("sql-7/s0.1", "noop"),
            TaskSpec::new("sql-7", "noop").deps(["sql-7/s0.0", "sql-7/s0.1"]),
        ];
        let submission = Submission {
            name: String::new(),
            tasks,
            outputs: vec!["sql-7".into()],
        };
        state.submit_to(g, submission).unwrap();
        let explain = "Stage 0: 2 tasks, reads files, output shuffled into 1 pieces\n\
                       Stage 1: 1 task, reads stage 0 (shuffle), output returned to the client\n";
        state.describe_query(g, "sql-7/", explain.into(), Some("sql-7"));
        let graph = &state.graphs[&g];
        let shown = query_progress(graph, &graph.queries[0]).expect("shown");
        assert_eq!(shown["finished"], false);
        let stages = shown["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 2);
        for (stage, tasks) in [(0, 2), (1, 1)] {
            assert_eq!(stages[stage]["tasks"], tasks);
            assert_eq!(stages[stage]["total"], tasks, "{shown}");
        }
        state.release_keys(g, &["sql-7".to_string()]);
        let graph = &state.graphs[&g];
        assert!(query_progress(graph, &graph.queries[0]).is_none());
    }
}
