//! Sessions: one long-lived Run stream per client, into which graphs are
//! submitted without waiting, whose wanted keys are reported one by one
//! and stay on the workers until released (futures, persisted results).
//!
//! Submissions queued while the stream is busy go out merged into one
//! message, so a loop of single-task submissions costs few messages.

use daskrs_proto::{RunEvent, RunRequest, run_event, run_request};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};

use crate::{Client, Error, Graph, Output};

/// At most this many tasks go into one merged submission.
const MERGE_TASKS: usize = 10_000;
/// Results fetched at once, one by one, when a batch could not be.
const FALLBACK_CONCURRENCY: usize = 16;

/// What a session reports about the keys it was asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Computed: key, format, size.
    Done(Vec<daskrs_proto::OutputInfo>),
    /// Erred, itself or because of the task `failure.key`.
    Erred {
        key: String,
        failure: crate::TaskFailure,
    },
    /// A submission was refused; none of its outputs will be computed.
    Rejected { outputs: Vec<String>, error: String },
}

/// A client's session with the scheduler. Dropping it (or losing the
/// connection) releases everything it holds.
pub struct Session {
    client: Client,
    pub graph_id: u64,
    tx: mpsc::UnboundedSender<RunRequest>,
    events: Mutex<mpsc::UnboundedReceiver<Result<RunEvent, tonic::Status>>>,
}

impl Client {
    /// Opens a session named `name` (shown in logs and the dashboard).
    pub async fn session(&self, name: &str) -> Result<Session, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(RunRequest {
            msg: Some(run_request::Msg::Session(daskrs_proto::OpenSession {
                name: name.to_string(),
            })),
        })
        .map_err(|_| Error::Lost("request stream closed".into()))?;
        let mut events = self
            .grpc
            .clone()
            .run(merged(rx))
            .await
            .map_err(Error::ended)?
            .into_inner();
        let graph_id = match events.next().await {
            Some(Ok(RunEvent {
                event: Some(run_event::Event::Accepted(a)),
            })) => a.graph_id,
            Some(Err(s)) => return Err(Error::ended(s)),
            _ => {
                return Err(Error::Lost("the scheduler did not open the session".into()));
            }
        };
        Ok(Session {
            client: self.clone(),
            graph_id,
            tx,
            events: Mutex::new(drain(events)),
        })
    }
}

impl Session {
    /// Queues a graph; its tasks may depend on keys the session has. Its
    /// outputs are reported as events.
    pub fn submit(&self, graph: Graph) -> Result<(), Error> {
        self.submit_explained(graph, String::new())
    }

    fn submit_explained(&self, graph: Graph, explain: String) -> Result<(), Error> {
        self.send(run_request::Msg::Submit(daskrs_proto::SubmitGraph {
            tasks: graph.tasks.into_iter().map(Into::into).collect(),
            outputs: graph.outputs,
            name: graph.name,
            explain,
        }))
    }

    /// Queues a planned query ([`Client::plan_sql_with`] with one output)
    /// whose answer becomes the session's key `answer`; its other tasks are
    /// keyed under `answer/`. Keys it reads that the plan does not make are
    /// the session's own (its input tables). `explain`, the plan's
    /// `--explain`, lets the dashboard show the query's stages.
    pub fn submit_query(&self, mut graph: Graph, answer: &str, explain: &str) -> Result<(), Error> {
        let [output] = graph.outputs.as_slice() else {
            return Err(Error::Rejected(format!(
                "a query submitted as one key needs one output, not {}",
                graph.outputs.len()
            )));
        };
        let output = output.clone();
        let made: std::collections::HashSet<String> =
            graph.tasks.iter().map(|t| t.key.clone()).collect();
        let rename = |k: &str| {
            if k == output {
                answer.to_string()
            } else {
                format!("{answer}/{k}")
            }
        };
        for t in &mut graph.tasks {
            t.key = rename(&t.key);
            for d in &mut t.deps {
                if made.contains(d.as_str()) {
                    *d = rename(d);
                }
            }
        }
        graph.outputs = vec![answer.to_string()];
        self.submit_explained(graph, explain.to_string())
    }

    /// The client no longer wants these keys.
    pub fn release(&self, keys: Vec<String>) -> Result<(), Error> {
        self.send(run_request::Msg::Release(daskrs_proto::ReleaseKeys {
            keys,
        }))
    }

    fn send(&self, msg: run_request::Msg) -> Result<(), Error> {
        self.tx
            .send(RunRequest { msg: Some(msg) })
            .map_err(|_| Error::Lost("the session's stream is closed".into()))
    }

    /// Waits for the next events: at least one, and whatever else has
    /// already arrived.
    pub async fn events(&self) -> Result<Vec<Event>, Error> {
        let mut stream = self.events.lock().await;
        let mut out = Vec::new();
        let mut next = stream.recv().await;
        loop {
            match next {
                Some(Ok(ev)) => out.extend(convert(ev)),
                Some(Err(s)) => return Err(Error::ended(s)),
                None if out.is_empty() => {
                    return Err(Error::Lost("the scheduler closed the session".into()));
                }
                None => return Ok(out),
            }
            // More already here? Take them without waiting.
            match stream.try_recv() {
                Ok(n) => next = Some(n),
                Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                Err(mpsc::error::TryRecvError::Empty) if out.is_empty() => {
                    next = stream.recv().await
                }
                Err(mpsc::error::TryRecvError::Empty) => return Ok(out),
            }
        }
    }

    /// Fetches a computed key's result, through the scheduler.
    pub async fn gather(&self, key: &str) -> Result<Output, Error> {
        self.client.gather_from(self.graph_id, key).await
    }

    /// Fetches computed keys' results in one stream, in order. Should one
    /// not be where the scheduler thought (its worker was lost), each is
    /// fetched on its own, waiting for those being computed again.
    pub async fn gather_many(&self, keys: Vec<String>) -> Result<Vec<Output>, Error> {
        let req = daskrs_proto::GatherManyRequest {
            graph_id: self.graph_id,
            keys: keys.clone(),
        };
        let got = match self.client.grpc.clone().gather_many(req).await {
            Ok(stream) => daskrs_proto::chunks::assemble_many(stream.into_inner(), keys.len())
                .await
                .map_err(tonic::Status::from),
            Err(s) => Err(s),
        };
        match got {
            Ok(parts) => Ok(keys
                .into_iter()
                .zip(parts)
                .map(|(key, (format, bytes))| Output { key, format, bytes })
                .collect()),
            Err(s) if s.code() == tonic::Code::Unavailable => futures::stream::iter(keys)
                .map(|key| async move { self.gather(&key).await })
                .buffered(FALLBACK_CONCURRENCY)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect(),
            Err(s) => Err(Error::Gather {
                key: keys.first().cloned().unwrap_or_default(),
                message: s.message().to_string(),
            }),
        }
    }
}

/// Reads the event stream as fast as it arrives, whoever is slow to ask
/// for events. HTTP/2 closes a connection on which many small frames wait
/// unread (`ENHANCE_YOUR_CALM`), and a caller busy submitting (a Python
/// loop of `submit`s holding the GIL) would otherwise leave the scheduler's
/// small Done events waiting there until it lost its session.
fn drain(
    mut events: tonic::Streaming<RunEvent>,
) -> mpsc::UnboundedReceiver<Result<RunEvent, tonic::Status>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let failed = ev.is_err();
            if tx.send(ev).is_err() || failed {
                break;
            }
        }
    });
    rx
}

fn convert(ev: RunEvent) -> Option<Event> {
    match ev.event? {
        run_event::Event::Done(d) => Some(Event::Done(d.outputs)),
        run_event::Event::Erred(e) => Some(Event::Erred {
            key: e.key,
            failure: crate::TaskFailure {
                key: e.failed_key,
                worker: e.worker,
                error: e.error,
                exception: e.exception.into(),
                lost_outputs: Vec::new(),
            },
        }),
        run_event::Event::Rejected(r) => Some(Event::Rejected {
            outputs: r.outputs,
            error: r.error,
        }),
        _ => None,
    }
}

/// How much a message holds, for merging: tasks, or keys released.
fn size(msg: &run_request::Msg) -> usize {
    match msg {
        run_request::Msg::Submit(s) => s.tasks.len().max(s.outputs.len()),
        run_request::Msg::Release(r) => r.keys.len(),
        // Anything else goes out alone.
        _ => MERGE_TASKS,
    }
}

/// The request stream: queued submissions (or releases) that follow each
/// other go out as one, up to `MERGE_TASKS` tasks (or keys).
fn merged(
    rx: mpsc::UnboundedReceiver<RunRequest>,
) -> impl futures::Stream<Item = RunRequest> + Send + 'static {
    futures::stream::unfold((rx, None), |(mut rx, held)| async move {
        let mut req: RunRequest = match held {
            Some(r) => r,
            None => rx.recv().await?,
        };
        let mut next = None;
        while req.msg.as_ref().is_some_and(|m| size(m) < MERGE_TASKS) {
            let Ok(more) = rx.try_recv() else { break };
            match (&mut req.msg, more.msg) {
                (Some(run_request::Msg::Submit(sub)), Some(run_request::Msg::Submit(more))) => {
                    sub.tasks.extend(more.tasks);
                    sub.outputs.extend(more.outputs);
                }
                (Some(run_request::Msg::Release(r)), Some(run_request::Msg::Release(more))) => {
                    r.keys.extend(more.keys);
                }
                (_, other) => {
                    next = Some(RunRequest { msg: other });
                    break;
                }
            }
        }
        Some((req, (rx, next)))
    })
}
