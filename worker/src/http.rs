//! `/metrics`, `/health` (alive) and `/ready` (registered with the scheduler).
//! With a cluster token, `/metrics` needs it unless opened for scrapers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use daskrs_proto::auth::{Token, check_http};
use tokio::sync::watch;

use crate::Error;
use crate::metrics::Metrics;

/// Who may read what.
#[derive(Clone)]
pub struct Access {
    pub token: Option<Token>,
    pub open_metrics: bool,
}

async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/health" | "/ready")
        || (req.uri().path() == "/metrics" && access.open_metrics);
    let checked = match &access.token {
        Some(token) if !open => check_http(req.headers(), token),
        _ => Ok(()),
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(refusal) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("{refusal}\n"),
        )
            .into_response(),
    }
}

pub async fn serve(
    addr: SocketAddr,
    access: Access,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), Error> {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not registered with the scheduler\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            guard,
        ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Listen { addr, source })?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok((task, bound))
}
