//! The daskrs client library: connect to a scheduler, run graphs and SQL,
//! follow their progress, gather results. The `daskrs` command is built on
//! it, and so is `daskrs local`, which runs a scheduler and workers in one
//! process.
//!
//! Without its `local` feature the library must not depend on the
//! scheduler, the worker or DataFusion: it speaks the wire protocol only.

#[cfg(feature = "local")]
pub mod local;
pub mod output;
pub mod session;
pub mod sql;

use std::time::Duration;

use bytes::Bytes;
use daskrs_core::DataFormat;
use daskrs_core::TaskSpec;
use daskrs_proto::scheduler_client::SchedulerClient;
use daskrs_proto::{RunRequest, run_event, run_request};
use futures::StreamExt;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Connect(String),
    #[error("graph rejected: {0}")]
    Rejected(String),
    #[error("task {:?} failed on worker {:?}: {}", .0.key, .0.worker, .0.error)]
    Failed(Box<TaskFailure>),
    #[error("lost the scheduler: {0}")]
    Lost(String),
    #[error("cannot gather {key:?}: {message}")]
    Gather { key: String, message: String },
    /// The cluster refused the call: no token, or the wrong one.
    #[error("{0}")]
    Refused(String),
    #[error("scheduler answered: {0}")]
    Status(tonic::Status),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error::refusal(&s).unwrap_or(Error::Status(s))
    }
}

impl Error {
    /// A stream the scheduler ended with `s`: refused, or lost.
    pub(crate) fn ended(s: tonic::Status) -> Error {
        Error::refusal(&s).unwrap_or_else(|| Error::Lost(s.message().to_string()))
    }

    /// The cluster's refusal `s` is, if it is one: no token or the wrong
    /// one, plain text to a TLS port, or a certificate of another cluster.
    fn refusal(s: &tonic::Status) -> Option<Error> {
        if s.code() == tonic::Code::Unauthenticated
            || s.message() == daskrs_proto::tls::PLAIN_TEXT_REFUSED
        {
            return Some(Error::Refused(s.message().to_string()));
        }
        daskrs_proto::tls::refused_certificate(s).then(|| {
            Error::Refused(format!(
                "the cluster refused this client's TLS certificate, or this client the \
                 cluster's: {}",
                daskrs_core::error_chain(s)
            ))
        })
    }

    /// The exit code the `daskrs` command uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Rejected(_) | Error::Refused(_) => 2,
            Error::Failed(_) => 1,
            Error::Connect(_) | Error::Lost(_) => 3,
            Error::Gather { .. } | Error::Status(_) => 4,
        }
    }
}

/// A task that failed for good, and what its graph lost by it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub key: String,
    pub worker: String,
    pub error: String,
    /// What the task's user code raised, serialized (pickled, for Python
    /// tasks); empty for the runtime's own errors.
    pub exception: Bytes,
    /// The outputs that can no longer be computed because of it.
    pub lost_outputs: Vec<String>,
}

/// A graph to run.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub tasks: Vec<TaskSpec>,
    /// Keys wanted back; empty means every task nothing depends on.
    pub outputs: Vec<String>,
}

/// Progress of a running graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: u64,
    pub done: u64,
    pub processing: u64,
}

/// A gathered result.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub key: String,
    pub format: DataFormat,
    pub bytes: Bytes,
}

#[derive(Clone)]
pub struct Client {
    grpc: SchedulerClient<daskrs_proto::net::Conn>,
    address: String,
}

/// A finished graph whose results stay on the workers until this is dropped.
pub struct Finished {
    pub graph_id: u64,
    /// Tasks the scheduler accepted for the graph.
    pub tasks: u64,
    pub outputs: Vec<daskrs_proto::OutputInfo>,
    /// Where the time went: the tasks summed by prefix, most time first.
    pub prefixes: Vec<daskrs_proto::PrefixTotals>,
    /// For SQL: the graph the scheduler planned.
    pub planned: Option<daskrs_proto::SqlPlanned>,
    // Closing the request stream releases the graph on the scheduler.
    _hold: mpsc::Sender<RunRequest>,
}

/// How a Run stream ended well.
pub(crate) enum Ran {
    Graph(Finished),
    /// SQL the scheduler answered itself, as an Arrow IPC stream.
    Local(Bytes),
}

impl Client {
    /// Connects to the scheduler at `address`; calls carry `token`.
    pub async fn connect(
        address: &str,
        token: Option<&daskrs_proto::auth::Token>,
    ) -> Result<Client, Error> {
        Client::connect_with(address, token, None).await
    }

    /// Connects to the scheduler at `address`; calls carry `token`, over
    /// TLS with `tls`'s certificates when given.
    pub async fn connect_with(
        address: &str,
        token: Option<&daskrs_proto::auth::Token>,
        tls: Option<&daskrs_proto::tls::Tls>,
    ) -> Result<Client, Error> {
        let channel = daskrs_proto::net::connect(address, token, tls)
            .await
            .map_err(|e| {
                let text = daskrs_core::error_chain(&e);
                if daskrs_proto::tls::refused_certificate(&e) {
                    Error::Refused(text)
                } else {
                    Error::Connect(format!("{text} (is a scheduler running there?)"))
                }
            })?;
        Ok(Client {
            grpc: daskrs_proto::limits!(SchedulerClient::new(channel)),
            address: address.to_string(),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Submits a graph and waits until its outputs are computed.
    pub async fn run(
        &self,
        graph: Graph,
        progress: impl FnMut(Progress),
    ) -> Result<Finished, Error> {
        let submit = run_request::Msg::Submit(daskrs_proto::SubmitGraph {
            tasks: graph.tasks.into_iter().map(Into::into).collect(),
            outputs: graph.outputs,
            name: graph.name,
            explain: String::new(),
        });
        match self.start(submit, progress).await? {
            Ran::Graph(finished) => Ok(finished),
            Ran::Local(_) => Err(Error::Status(tonic::Status::internal(
                "the scheduler answered a graph with a SQL result",
            ))),
        }
    }

    /// Opens a Run stream with `msg` and follows it to its end.
    pub(crate) async fn start(
        &self,
        msg: run_request::Msg,
        mut progress: impl FnMut(Progress),
    ) -> Result<Ran, Error> {
        let (tx, rx) = mpsc::channel(1);
        tx.send(RunRequest { msg: Some(msg) })
            .await
            .map_err(|_| Error::Lost("request stream closed".into()))?;
        let mut grpc = self.grpc.clone();
        let mut events = grpc
            .run(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => Error::Rejected(s.message().to_string()),
                tonic::Code::Unavailable | tonic::Code::Unauthenticated => Error::ended(s),
                _ => Error::Status(s),
            })?
            .into_inner();
        let mut graph_id = 0;
        let mut tasks = 0;
        let mut planned = None;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(Error::ended)?;
            match ev.event {
                Some(run_event::Event::Planned(p)) => planned = Some(p),
                Some(run_event::Event::Local(answer)) => return Ok(Ran::Local(answer.into())),
                Some(run_event::Event::Accepted(a)) => {
                    graph_id = a.graph_id;
                    tasks = a.tasks;
                    progress(Progress {
                        total: a.tasks,
                        ..Progress::default()
                    });
                }
                Some(run_event::Event::Progress(p)) => progress(Progress {
                    total: p.total,
                    done: p.done,
                    processing: p.processing,
                }),
                Some(run_event::Event::Finished(f)) => {
                    return Ok(Ran::Graph(Finished {
                        graph_id,
                        tasks,
                        outputs: f.outputs,
                        prefixes: f.prefixes,
                        planned,
                        _hold: tx,
                    }));
                }
                Some(run_event::Event::Failed(f)) => {
                    return Err(Error::Failed(Box::new(TaskFailure {
                        key: f.key,
                        worker: f.worker,
                        error: f.error,
                        exception: f.exception.into(),
                        lost_outputs: f.lost_outputs,
                    })));
                }
                // Session events; a graph's stream has none.
                Some(
                    run_event::Event::Done(_)
                    | run_event::Event::Erred(_)
                    | run_event::Event::Rejected(_),
                )
                | None => {}
            }
        }
        Err(Error::Lost("the scheduler ended the graph's stream".into()))
    }

    /// Fetches one output of a finished graph, through the scheduler. A
    /// result being recomputed after a worker loss is waited for.
    pub async fn gather(&self, finished: &Finished, key: &str) -> Result<Output, Error> {
        self.gather_from(finished.graph_id, key).await
    }

    /// Fetches one result a graph or session holds for the client.
    pub(crate) async fn gather_from(&self, graph_id: u64, key: &str) -> Result<Output, Error> {
        let mut delay = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            let mut grpc = self.grpc.clone();
            let req = daskrs_proto::GatherRequest {
                graph_id,
                key: key.to_string(),
            };
            let result = match grpc.gather(req).await {
                Ok(stream) => daskrs_proto::chunks::assemble(stream.into_inner())
                    .await
                    .map_err(tonic::Status::from),
                Err(s) => Err(s),
            };
            match result {
                Ok((format, bytes)) => {
                    return Ok(Output {
                        key: key.to_string(),
                        format,
                        bytes,
                    });
                }
                Err(s) if s.code() == tonic::Code::Unavailable && attempts < 40 => {
                    attempts += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(s) => {
                    return Err(Error::Gather {
                        key: key.to_string(),
                        message: s.message().to_string(),
                    });
                }
            }
        }
    }

    /// Runs a graph and gathers every output.
    pub async fn compute(
        &self,
        graph: Graph,
        progress: impl FnMut(Progress),
    ) -> Result<Vec<Output>, Error> {
        let finished = self.run(graph, progress).await?;
        let mut out = Vec::with_capacity(finished.outputs.len());
        for o in &finished.outputs {
            out.push(self.gather(&finished, &o.key).await?);
        }
        Ok(out)
    }

    pub async fn info(&self) -> Result<daskrs_proto::ClusterInfoResponse, Error> {
        Ok(self
            .grpc
            .clone()
            .cluster_info(daskrs_proto::ClusterInfoRequest {})
            .await?
            .into_inner())
    }

    pub async fn cancel(&self, graph_id: u64) -> Result<bool, Error> {
        Ok(self
            .grpc
            .clone()
            .cancel(daskrs_proto::CancelRequest { graph_id })
            .await?
            .into_inner()
            .cancelled)
    }

    pub async fn retire(
        &self,
        workers: Vec<String>,
        count: u32,
        timeout_seconds: u32,
    ) -> Result<Vec<String>, Error> {
        Ok(self
            .grpc
            .clone()
            .retire_workers(daskrs_proto::RetireWorkersRequest {
                workers,
                count,
                timeout_seconds,
            })
            .await?
            .into_inner()
            .retired)
    }

    /// Waits until at least `n` workers are registered.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have = self.info().await?.workers.len();
            if have >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Connect(format!(
                    "only {have} of {n} workers joined within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
