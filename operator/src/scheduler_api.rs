//! The scheduler's HTTP API as the operator uses it: which workers to
//! retire (and retiring them, so they hand off their results first), and
//! how many workers the scheduler wants.

use std::time::Duration;

use serde::Deserialize;

/// What `GET /api/v1/adaptive` answers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Adaptive {
    pub desired_workers: u64,
    pub tasks_waiting: u64,
    pub tasks_processing: u64,
    pub idle_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("scheduler at {url} unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("scheduler at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// A cluster's scheduler API: its base URL and the cluster token its
/// calls carry.
#[derive(Clone)]
pub struct SchedulerAt {
    pub base: String,
    pub token: String,
}

impl std::fmt::Debug for SchedulerAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerAt")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The calls the reconciler makes; a trait so reconcile tests can answer
/// them without a scheduler.
#[async_trait::async_trait]
pub trait SchedulerApi: Send + Sync {
    async fn adaptive(&self, at: &SchedulerAt) -> Result<Adaptive, ApiError>;
    /// Retires `count` workers of the scheduler's choosing, or the named
    /// ones, and waits until they have handed off their results and left.
    /// Returns the names of the retired workers.
    async fn retire(
        &self,
        at: &SchedulerAt,
        names: &[String],
        count: usize,
    ) -> Result<Vec<String>, ApiError>;
}

/// The scheduler's API over HTTP.
pub struct HttpScheduler {
    http: reqwest::Client,
    retire_timeout: Duration,
}

impl HttpScheduler {
    pub fn new(retire_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client without TLS always builds");
        HttpScheduler {
            http,
            retire_timeout,
        }
    }
}

#[derive(Deserialize)]
struct Retired {
    retired: Vec<String>,
}

#[async_trait::async_trait]
impl SchedulerApi for HttpScheduler {
    async fn adaptive(&self, at: &SchedulerAt) -> Result<Adaptive, ApiError> {
        let url = format!("{}/api/v1/adaptive", at.base);
        let req = self
            .http
            .get(&url)
            .bearer_auth(&at.token)
            .timeout(Duration::from_secs(5));
        send_json(req, &url).await
    }

    async fn retire(
        &self,
        at: &SchedulerAt,
        names: &[String],
        count: usize,
    ) -> Result<Vec<String>, ApiError> {
        let url = format!("{}/api/v1/retire", at.base);
        let body = serde_json::json!({
            "workers": names,
            "count": if names.is_empty() { count } else { 0 },
            "timeout_seconds": self.retire_timeout.as_secs(),
        });
        let req = self
            .http
            .post(&url)
            .bearer_auth(&at.token)
            .json(&body)
            .timeout(self.retire_timeout + Duration::from_secs(10));
        let r: Retired = send_json(req, &url).await?;
        Ok(r.retired)
    }
}

async fn send_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<T, ApiError> {
    let unreachable = |source| ApiError::Unreachable {
        url: url.to_string(),
        source,
    };
    let resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(ApiError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body,
        });
    }
    resp.json().await.map_err(unreachable)
}
