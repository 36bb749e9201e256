//! The client-facing service: run graphs, gather results, cancel, cluster
//! information, retire workers.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use daskrs_core::{TaskSpec, TaskState};
use daskrs_proto::scheduler_server::Scheduler;
use daskrs_proto::{
    CancelRequest, CancelResponse, ClusterInfoRequest, ClusterInfoResponse, DataChunk,
    GatherManyRequest, GatherRequest, KindWait, RetireWorkersRequest, RetireWorkersResponse,
    RunEvent, RunRequest, SqlQuery, SqlRequest, SqlResponse, StateCount, WorkerInfo, run_event,
    run_request, sql_response,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Core;
use crate::state::{LocateError, Submission};

pub struct ClientService {
    pub core: Arc<Core>,
    pub planner: Arc<daskrs_engine::Planner>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send>>;
type TaggedStream = Pin<Box<dyn Stream<Item = Result<daskrs_proto::GatheredChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for ClientService {
    type RunStream = EventStream;
    type GatherStream = ChunkStream;
    type GatherManyStream = TaggedStream;

    async fn gather_many(
        &self,
        req: Request<GatherManyRequest>,
    ) -> Result<Response<TaggedStream>, Status> {
        let GatherManyRequest { graph_id, keys } = req.into_inner();
        // One FetchMany per holder, each with the results it is asked for.
        let mut by_holder: HashMap<String, (Vec<u32>, Vec<u64>)> = HashMap::new();
        {
            let g = self.core.lock();
            for (index, key) in keys.iter().enumerate() {
                let (task, addrs) = g.state.locate(graph_id, key).map_err(locate_status)?;
                let addr = addrs.into_iter().next().ok_or_else(|| {
                    Status::unavailable(format!("no worker holds the result of {key:?}"))
                })?;
                let (indices, tasks) = by_holder.entry(addr).or_default();
                indices.push(index as u32);
                tasks.push(task);
            }
        }
        let (tx, rx) = mpsc::channel(16);
        for (addr, (indices, task_ids)) in by_holder {
            let channel = self
                .core
                .channels
                .get(&addr)
                .map_err(|e| Status::internal(e.to_string()))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut peer = daskrs_proto::limits!(
                    daskrs_proto::peer_data_client::PeerDataClient::new(channel)
                );
                let stream = peer
                    .fetch_many(daskrs_proto::FetchManyRequest { task_ids })
                    .await;
                let mut stream = match stream {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        let _ = tx.send(Err(holder_lost(&addr, &s))).await;
                        return;
                    }
                };
                while let Some(item) = futures::StreamExt::next(&mut stream).await {
                    let item = item.map_err(|s| holder_lost(&addr, &s)).and_then(|mut c| {
                        // From the holder's numbering to the request's.
                        c.index = *indices.get(c.index as usize).ok_or_else(|| {
                            Status::internal(format!("{addr} sent a result it was not asked for"))
                        })?;
                        Ok(c)
                    });
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            });
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn run(
        &self,
        req: Request<Streaming<RunRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the submit message"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // With a query's `--explain`, shown on the dashboard with its stages.
        let (submission, explain) = match first.msg {
            Some(run_request::Msg::Submit(mut sub)) => {
                let explain = std::mem::take(&mut sub.explain);
                (submission(sub)?, explain)
            }
            Some(run_request::Msg::Session(open)) => {
                return Ok(Response::new(session(
                    &self.core, open.name, inbound, tx, rx,
                )));
            }
            Some(run_request::Msg::Release(_)) => {
                return Err(Status::invalid_argument(
                    "`release` is for sessions; open one with `session` first",
                ));
            }
            Some(run_request::Msg::Sql(s)) => match self.plan(&s.sql, Vec::new(), false).await? {
                daskrs_engine::Planned::Local(bytes) => {
                    let answer = RunEvent {
                        event: Some(run_event::Event::Local(bytes.to_vec())),
                    };
                    return Ok(Response::new(Box::pin(futures::stream::iter([Ok(answer)]))));
                }
                daskrs_engine::Planned::Query(q) => {
                    let _ = tx.send(Ok(RunEvent {
                        event: Some(run_event::Event::Planned(daskrs_proto::SqlPlanned {
                            outputs: q.outputs.clone(),
                            stages: q.stages as u32,
                        })),
                    }));
                    let submission = Submission {
                        name: daskrs_core::graph::query_name(&s.sql),
                        tasks: q.tasks,
                        outputs: q.outputs,
                    };
                    (submission, q.explain)
                }
            },
            None => {
                return Err(Status::invalid_argument(
                    "the first message of Run must be `submit`, `sql` or `session`",
                ));
            }
        };
        let graph_id = self.core.with(|i| {
            let (graph_id, count) = i
                .state
                .submit(submission)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !explain.is_empty() {
                i.state.describe_query(graph_id, "", explain, None);
            }
            let _ = tx.send(Ok(RunEvent {
                event: Some(run_event::Event::Accepted(daskrs_proto::GraphAccepted {
                    graph_id,
                    tasks: count as u64,
                })),
            }));
            i.clients.insert(graph_id, tx);
            Ok::<_, Status>(graph_id)
        })?;
        // The client holds its results by keeping its side open; when it
        // closes (or goes away) the graph is released.
        let core = self.core.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            core.with(|i| {
                i.state.remove_graph(graph_id);
                i.clients.remove(&graph_id);
            });
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn gather(&self, req: Request<GatherRequest>) -> Result<Response<ChunkStream>, Status> {
        let GatherRequest { graph_id, key } = req.into_inner();
        let (task, addrs) = self
            .core
            .lock()
            .state
            .locate(graph_id, &key)
            .map_err(locate_status)?;
        let mut errors = Vec::new();
        for addr in &addrs {
            let channel = self
                .core
                .channels
                .get(addr)
                .map_err(|e| Status::internal(e.to_string()))?;
            let mut peer =
                daskrs_proto::limits!(daskrs_proto::peer_data_client::PeerDataClient::new(channel));
            match peer
                .fetch(daskrs_proto::FetchRequest {
                    task_id: task,
                    part: None,
                })
                .await
            {
                Ok(r) => return Ok(Response::new(Box::pin(r.into_inner()))),
                Err(s) => errors.push(format!("{addr}: {}", s.message())),
            }
        }
        Err(Status::unavailable(format!(
            "result of {key:?} could not be fetched from its workers: {}",
            if errors.is_empty() {
                "none holds it".to_string()
            } else {
                errors.join("; ")
            }
        )))
    }

    async fn cancel(
        &self,
        req: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let graph_id = req.into_inner().graph_id;
        let cancelled = self.core.with(|i| {
            let removed = i.state.remove_graph(graph_id);
            if removed && let Some(tx) = i.clients.get(&graph_id) {
                let _ = tx.send(Ok(RunEvent {
                    event: Some(run_event::Event::Failed(daskrs_proto::GraphFailed {
                        graph_id,
                        error: "the graph was cancelled".into(),
                        ..Default::default()
                    })),
                }));
            }
            removed
        });
        Ok(Response::new(CancelResponse { cancelled }))
    }

    async fn cluster_info(
        &self,
        _: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        Ok(Response::new(cluster_info(&self.core)))
    }

    async fn retire_workers(
        &self,
        req: Request<RetireWorkersRequest>,
    ) -> Result<Response<RetireWorkersResponse>, Status> {
        let r = req.into_inner();
        let timeout = Duration::from_secs(if r.timeout_seconds == 0 {
            60
        } else {
            r.timeout_seconds as u64
        });
        let retired = retire_and_wait(&self.core, &r.workers, r.count as usize, timeout)
            .await
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(RetireWorkersResponse { retired }))
    }

    async fn sql(&self, req: Request<SqlRequest>) -> Result<Response<SqlResponse>, Status> {
        let SqlRequest {
            sql,
            tables,
            one_output,
        } = req.into_inner();
        let tables = tables
            .iter()
            .map(|t| daskrs_engine::InputTable::from_ipc(&t.name, &t.key, &t.schema))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let planned = self.plan(&sql, tables, one_output).await?;
        let result = match planned {
            daskrs_engine::Planned::Local(bytes) => sql_response::Result::Local(bytes.to_vec()),
            daskrs_engine::Planned::Query(q) => sql_response::Result::Query(SqlQuery {
                tasks: q.tasks.into_iter().map(Into::into).collect(),
                outputs: q.outputs,
                explain: q.explain,
                stages: q.stages as u32,
            }),
        };
        Ok(Response::new(SqlResponse {
            result: Some(result),
        }))
    }
}

fn locate_status(e: LocateError) -> Status {
    match e {
        LocateError::NotReady(..) => Status::unavailable(e.to_string()),
        LocateError::Erred(_) => Status::failed_precondition(e.to_string()),
        LocateError::NoGraph(_) | LocateError::NoKey(_) => Status::not_found(e.to_string()),
        LocateError::NotOutput(_) => Status::invalid_argument(e.to_string()),
    }
}

/// A holder that failed to send results: they may be elsewhere, or computed
/// again, so the client can ask again.
fn holder_lost(addr: &str, s: &Status) -> Status {
    Status::unavailable(format!(
        "results could not be fetched from {addr}: {}",
        s.message()
    ))
}

pub(crate) fn submission(sub: daskrs_proto::SubmitGraph) -> Result<Submission, Status> {
    let tasks = sub
        .tasks
        .into_iter()
        .map(TaskSpec::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Submission {
        name: sub.name,
        tasks,
        outputs: sub.outputs,
    })
}

/// Serves a session: submissions and releases until the client closes its
/// side, which releases everything the session holds.
fn session(
    core: &Arc<Core>,
    name: String,
    mut inbound: Streaming<RunRequest>,
    tx: super::EventSender,
    rx: mpsc::UnboundedReceiver<Result<RunEvent, Status>>,
) -> EventStream {
    let graph_id = core.with(|i| {
        let graph_id = i.state.open_session(name);
        let _ = tx.send(Ok(RunEvent {
            event: Some(run_event::Event::Accepted(daskrs_proto::GraphAccepted {
                graph_id,
                tasks: 0,
            })),
        }));
        i.clients.insert(graph_id, tx.clone());
        graph_id
    });
    let core = core.clone();
    tokio::spawn(async move {
        loop {
            let req = match inbound.message().await {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(status) => {
                    // Everything the session held is released below: say why.
                    tracing::warn!(graph = graph_id, error = %status, "session stream failed");
                    break;
                }
            };
            match req.msg {
                Some(run_request::Msg::Submit(mut sub)) => {
                    let outputs = sub.outputs.clone();
                    let explain = std::mem::take(&mut sub.explain);
                    let added = submission(sub).and_then(|sub| {
                        core.with(|i| {
                            i.state.submit_to(graph_id, sub)?;
                            // A query's tasks are `<answer>/s<stage>.<task>`.
                            if let ([answer], false) = (outputs.as_slice(), explain.is_empty()) {
                                let keys = format!("{answer}/");
                                i.state
                                    .describe_query(graph_id, &keys, explain, Some(answer));
                            }
                            Ok(())
                        })
                        .map_err(|e: daskrs_core::GraphError| {
                            Status::invalid_argument(e.to_string())
                        })
                    });
                    if let Err(status) = added {
                        let _ = tx.send(Ok(RunEvent {
                            event: Some(run_event::Event::Rejected(daskrs_proto::SubmitRejected {
                                outputs,
                                error: status.message().to_string(),
                            })),
                        }));
                    }
                }
                Some(run_request::Msg::Release(r)) => {
                    core.with(|i| i.state.release_keys(graph_id, &r.keys));
                }
                Some(run_request::Msg::Session(_)) | Some(run_request::Msg::Sql(_)) | None => {
                    let _ = tx.send(Err(Status::invalid_argument(
                        "a session takes `submit` and `release` only",
                    )));
                    break;
                }
            }
        }
        core.with(|i| {
            i.state.remove_graph(graph_id);
            i.clients.remove(&graph_id);
        });
    });
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

impl ClientService {
    /// Plans SQL with the scheduler's catalog and S3 access. A query needs
    /// workers to run on.
    async fn plan(
        &self,
        sql: &str,
        tables: Vec<daskrs_engine::InputTable>,
        one_output: bool,
    ) -> Result<daskrs_engine::Planned, Status> {
        let threads: usize = self.core.with(|i| {
            i.state
                .workers
                .values()
                .filter(|w| w.accepts_tasks())
                .map(|w| w.nthreads as usize)
                .sum()
        });
        let started = std::time::Instant::now();
        // Reading a corrupt file can panic inside a reader library: planning
        // runs as its own task so that becomes an error for this request only.
        let planner = self.planner.clone();
        let sql = sql.to_string();
        let planned = tokio::spawn(async move {
            planner
                .plan_with(&sql, threads.max(1), &tables, one_output)
                .await
        })
        .await
        .map_err(|e| {
            let why = e
                .try_into_panic()
                .ok()
                .and_then(|p| daskrs_core::panic_message(p.as_ref()).map(str::to_string))
                .unwrap_or_else(|| "cancelled".into());
            Status::invalid_argument(format!(
                "planning failed while reading the query's files (a corrupt file?): {why}"
            ))
        })?
        .map_err(|e| match e {
            // Planning reads only the statement and the files it names:
            // whatever fails is the client's to fix.
            daskrs_engine::Error::BadSql(_)
            | daskrs_engine::Error::Storage(_)
            | daskrs_engine::Error::Corrupt(_)
            | daskrs_engine::Error::Failed(_) => Status::invalid_argument(e.to_string()),
            daskrs_engine::Error::PeerGone(_) | daskrs_engine::Error::Raised { .. } => {
                Status::internal(e.to_string())
            }
        })?;
        if let daskrs_engine::Planned::Query(q) = &planned {
            if threads == 0 {
                // Not `unavailable`: the scheduler is there, the cluster is empty.
                return Err(Status::failed_precondition(
                    "no workers are attached to run the query",
                ));
            }
            tracing::info!(
                stages = q.stages,
                tasks = q.tasks.len(),
                plan_ms = started.elapsed().as_millis() as u64,
                "planned a query"
            );
        }
        Ok(planned)
    }
}

pub fn cluster_info(core: &Core) -> ClusterInfoResponse {
    let g = core.lock();
    let s = &g.state;
    let mut workers: Vec<WorkerInfo> = s
        .workers
        .values()
        .map(|w| WorkerInfo {
            id: w.id,
            name: w.name.clone(),
            address: w.address.clone(),
            nthreads: w.nthreads,
            memory_limit: w.memory_limit,
            memory_bytes: w.memory_bytes,
            spilled_bytes: w.spilled_bytes,
            processing: w.processing.len() as u32,
            held_results: w.has_what.len() as u64,
            status: w.status.as_str().to_string(),
            executed: w.executed,
            kinds: w
                .kinds
                .iter()
                .filter(|k| !daskrs_core::kinds::is_builtin(k))
                .cloned()
                .collect(),
            python: w.python.clone(),
        })
        .collect();
    workers.sort_by_key(|w| w.id);
    ClusterInfoResponse {
        workers,
        tasks: TaskState::ALL
            .iter()
            .filter(|s| **s != TaskState::Forgotten)
            .map(|st| StateCount {
                state: st.as_str().to_string(),
                count: s.count(*st),
            })
            .collect(),
        graphs: s.graphs.len() as u64,
        scheduler_version: env!("CARGO_PKG_VERSION").to_string(),
        no_worker: s
            .no_worker()
            .into_iter()
            .map(|(kind, tasks)| KindWait {
                kind: kind.to_string(),
                tasks,
            })
            .collect(),
    }
}

/// Retires the named workers (or `count` chosen ones) and waits until they
/// have handed off their results and closed. Returns their names.
pub async fn retire_and_wait(
    core: &Core,
    names: &[String],
    count: usize,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let chosen = core.with(|i| {
        let ids = if names.is_empty() {
            i.state.workers_to_close(count)
        } else {
            let mut ids = Vec::new();
            for n in names {
                ids.push(
                    i.state
                        .find_worker(n)
                        .ok_or_else(|| format!("no worker named {n:?}"))?,
                );
            }
            ids
        };
        let named: Vec<(u64, String)> = ids
            .iter()
            .map(|id| (*id, i.state.workers[id].name.clone()))
            .collect();
        i.state.retire(&ids);
        Ok::<_, String>(named)
    })?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = {
            let g = core.lock();
            chosen
                .iter()
                .filter(|(id, _)| g.state.workers.contains_key(id))
                .count()
        };
        if left == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let g = core.lock();
    Ok(chosen
        .into_iter()
        .filter(|(id, _)| !g.state.workers.contains_key(id))
        .map(|(_, n)| n)
        .collect())
}
