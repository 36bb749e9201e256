//! The peer data service: other workers (and the scheduler, for clients)
//! fetch results this worker holds, as streams of chunks.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daskrs_proto::peer_data_server::PeerData;
use daskrs_proto::{DataChunk, FetchManyRequest, FetchRequest, GatheredChunk, chunks};
use futures::Stream;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status};

use crate::TaskError;
use crate::data::Data;
use crate::store::Store;

pub struct PeerService {
    pub store: Arc<Store>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send>>;
type TaggedStream = Pin<Box<dyn Stream<Item = Result<GatheredChunk, Status>> + Send>>;

#[tonic::async_trait]
impl PeerData for PeerService {
    type FetchStream = ChunkStream;
    type FetchManyStream = TaggedStream;

    async fn fetch_many(
        &self,
        req: Request<FetchManyRequest>,
    ) -> Result<Response<TaggedStream>, Status> {
        let ids = req.into_inner().task_ids;
        let store = self.store.clone();
        // Read on a blocking thread (spilled results come from disk), sent
        // as they are read.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            for (index, id) in ids.into_iter().enumerate() {
                let data = match store.claim(id) {
                    Ok(Some(d)) => Ok(d),
                    Ok(None) => Err(Status::not_found(format!(
                        "result {id} is not held by this worker"
                    ))),
                    Err(e) => Err(Status::internal(e.to_string())),
                };
                let data = match data {
                    Ok(d) => d,
                    Err(s) => {
                        let _ = tx.blocking_send(Err(s));
                        return;
                    }
                };
                for chunk in chunks::split(data.format, data.bytes) {
                    let tagged = GatheredChunk {
                        index: index as u32,
                        chunk: Some(chunk),
                    };
                    if tx.blocking_send(Ok(tagged)).is_err() {
                        return; // the fetcher went away
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<ChunkStream>, Status> {
        let FetchRequest { task_id: id, part } = req.into_inner();
        let store = self.store.clone();
        let data = tokio::task::spawn_blocking(move || store.claim(id))
            .await
            .map_err(|e| Status::internal(format!("reading result {id}: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("result {id} is not held by this worker")))?;
        let data = match part {
            Some(p) => data
                .piece(p)
                .map_err(|e| Status::invalid_argument(format!("result {id}: {e}")))?,
            None => data,
        };
        let parts = chunks::split(data.format, data.bytes);
        Ok(Response::new(Box::pin(futures::stream::iter(
            parts.into_iter().map(Ok),
        ))))
    }
}

/// Most results one call to a peer asks for.
const MOST_PER_CALL: usize = 256;

type Reply = oneshot::Sender<Result<Data, TaskError>>;
/// Per peer with a call under way: the results waiting for the next call.
type Waiting = HashMap<String, Vec<(u64, Reply)>>;

/// Fetches whole results from peers, several to a call: while a call to a
/// peer is under way, the results wanted from it meanwhile wait and go
/// together in the next one. Each call costs a stream on both sides
/// (headers, a task, a blocking read), which for the small results of a
/// fine-grained graph costs more than their bytes; under load the calls
/// grow, when idle each result goes at once.
#[derive(Clone)]
pub struct Fetcher {
    channels: daskrs_proto::net::Channels,
    waiting: Arc<Mutex<Waiting>>,
    calls: prometheus::IntCounter,
}

impl Fetcher {
    /// Counts its calls to peers in `calls`.
    pub fn new(channels: daskrs_proto::net::Channels, calls: prometheus::IntCounter) -> Fetcher {
        Fetcher {
            channels,
            waiting: Default::default(),
            calls,
        }
    }

    /// A result (or one piece of it) from the first of `addresses` that has
    /// it, as [`fetch_from`] gets it.
    pub async fn fetch(
        &self,
        id: u64,
        part: Option<u32>,
        addresses: &[String],
    ) -> Result<Data, TaskError> {
        let Some(first) = addresses.first().filter(|_| part.is_none()) else {
            self.calls.inc();
            return fetch_from(&self.channels, id, part, addresses).await;
        };
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match waiting.get_mut(first) {
                Some(queue) => {
                    queue.push((id, tx));
                    false
                }
                None => {
                    waiting.insert(first.clone(), vec![(id, tx)]);
                    true
                }
            }
        };
        if start {
            tokio::spawn(self.clone().serve_peer(first.clone()));
        }
        let failed = match rx.await {
            Ok(Ok(data)) => return Ok(data),
            Ok(Err(e)) => e,
            Err(_) => TaskError::PeerGone(format!("{first}: the call was dropped")),
        };
        if addresses.len() == 1 {
            return Err(failed);
        }
        self.calls.inc();
        fetch_from(&self.channels, id, None, &addresses[1..])
            .await
            .map_err(|other| merged(vec![failed, other]))
    }

    /// Calls `peer` for what waits for it until nothing does.
    async fn serve_peer(self, peer: String) {
        // Should this end otherwise than by running out of work (a panic),
        // the peer's queue goes with it: its waiters fail rather than wait
        // for ever.
        struct Abandon<'a>(&'a Fetcher, &'a str, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if self.2 {
                    let mut waiting = self.0.waiting.lock().unwrap_or_else(|p| p.into_inner());
                    waiting.remove(self.1);
                }
            }
        }
        let mut abandon = Abandon(&self, &peer, true);
        loop {
            let batch: Vec<(u64, Reply)> = {
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = waiting.get_mut(&peer) else {
                    abandon.2 = false;
                    return;
                };
                if queue.is_empty() {
                    // Under the same lock as the check: a result wanted from
                    // now on starts a new call.
                    waiting.remove(&peer);
                    abandon.2 = false;
                    return;
                }
                let n = queue.len().min(MOST_PER_CALL);
                queue.drain(..n).collect()
            };
            self.calls.inc();
            let again = self.call(&peer, batch).await;
            if !again.is_empty() {
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(queue) = waiting.get_mut(&peer) {
                    queue.splice(0..0, again);
                }
            }
        }
    }

    /// One call for `batch`; answers each waiter whose result came or that
    /// the peer failed on, and returns those to ask for again: the peer
    /// stops at the first result it does not hold, and the ones after it in
    /// the call are not at fault.
    async fn call(&self, peer: &str, batch: Vec<(u64, Reply)>) -> Vec<(u64, Reply)> {
        let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
        let mut replies: Vec<Option<Reply>> = batch.into_iter().map(|(_, r)| Some(r)).collect();
        let outcome = self.stream(peer, &ids, &mut replies).await;
        let Err((error, only_first)) = outcome else {
            return Vec::new();
        };
        let mut again = Vec::new();
        let mut blamed = false;
        for (id, reply) in ids.into_iter().zip(replies) {
            let Some(reply) = reply else { continue };
            if only_first && blamed {
                again.push((id, reply));
                continue;
            }
            blamed = true;
            let _ = reply.send(Err(error.clone()));
        }
        again
    }

    /// Streams the results of `ids` from `peer`, answering each waiter as
    /// its result completes. An error says whether only the first result
    /// not yet answered is at fault (the peer does not hold it).
    async fn stream(
        &self,
        peer: &str,
        ids: &[u64],
        replies: &mut [Option<Reply>],
    ) -> Result<(), (TaskError, bool)> {
        let gone = |m: String| (TaskError::PeerGone(format!("{peer}: {m}")), false);
        let channel = self.channels.get(peer).map_err(|e| gone(e.to_string()))?;
        let mut client =
            daskrs_proto::limits!(daskrs_proto::peer_data_client::PeerDataClient::new(channel));
        let request = FetchManyRequest {
            task_ids: ids.to_vec(),
        };
        let stream = watched(client.fetch_many(request)).await.map_err(gone)?;
        chunks::assemble_each(stream, ids.len(), |at, format, bytes| {
            if let Some(reply) = replies[at].take() {
                let _ = reply.send(Ok(Data { format, bytes }));
            }
        })
        .await
        .map_err(|e| match e {
            chunks::AssembleError::Status(s) if s.code() == Code::NotFound => (
                TaskError::PeerGone(format!("{peer}: {}", s.message())),
                true,
            ),
            chunks::AssembleError::Format(_) => (TaskError::Corrupt(format!("{peer}: {e}")), false),
            chunks::AssembleError::Status(s) => gone(s.message().to_string()),
            other => gone(other.to_string()),
        })
    }
}

/// Fetches a result from the first of `addresses` that has it. Fails as
/// corrupt data if a holder sent bytes that do not decode, else as a lost peer.
pub async fn fetch_from(
    pool: &daskrs_proto::net::Channels,
    id: u64,
    part: Option<u32>,
    addresses: &[String],
) -> Result<crate::data::Data, TaskError> {
    let mut errors = Vec::new();
    for addr in addresses {
        match fetch_one(pool, id, part, addr).await {
            Ok(d) => return Ok(d),
            Err(e) => errors.push(e.context(addr)),
        }
    }
    if errors.is_empty() {
        return Err(TaskError::PeerGone(format!("no worker holds result {id}")));
    }
    Err(merged(errors))
}

/// The failures of several holders as one: corrupt data if any holder sent
/// bytes that do not decode, else a lost peer.
fn merged(errors: Vec<TaskError>) -> TaskError {
    let corrupt = errors.iter().any(|e| matches!(e, TaskError::Corrupt(_)));
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if corrupt {
        TaskError::Corrupt(message)
    } else {
        TaskError::PeerGone(message)
    }
}

/// The stream a call to a peer opens, given up on when the peer does not
/// answer, or stops sending, for [`STALL_TIMEOUT`]. An error is the reason.
async fn watched<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<Response<tonic::Streaming<T>>, Status>>,
) -> Result<Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>, String> {
    let stream = tokio::time::timeout(STALL_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {STALL_TIMEOUT:?}"))?
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok(Box::pin(stream.timeout(STALL_TIMEOUT).map(|item| {
        item.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "stalled for {STALL_TIMEOUT:?}"
            )))
        })
    })))
}

/// A peer that sends nothing for this long is taken as gone: a frozen
/// process keeps its connection open, and waiting for TCP keepalive would
/// stall the task for half a minute.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn fetch_one(
    pool: &daskrs_proto::net::Channels,
    id: u64,
    part: Option<u32>,
    addr: &str,
) -> Result<crate::data::Data, TaskError> {
    let gone = |m: String| TaskError::PeerGone(m);
    let channel = pool.get(addr).map_err(|e| gone(e.to_string()))?;
    let mut client =
        daskrs_proto::limits!(daskrs_proto::peer_data_client::PeerDataClient::new(channel));
    let stream = watched(client.fetch(FetchRequest { task_id: id, part }))
        .await
        .map_err(gone)?;
    let (format, bytes) = chunks::assemble(stream).await.map_err(|e| match e {
        chunks::AssembleError::Format(_) => TaskError::Corrupt(e.to_string()),
        _ => gone(e.to_string()),
    })?;
    Ok(crate::data::Data { format, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer data service on a port of its own holding `held`.
    async fn peer(held: &[u64], dir: &std::path::Path) -> String {
        let store = Arc::new(Store::new(1 << 30, dir));
        for &id in held {
            store.put(id, Data::opaque(format!("result {id}").into_bytes()));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let svc = daskrs_proto::peer_data_server::PeerDataServer::new(PeerService { store });
        tokio::spawn(
            daskrs_proto::net::server()
                .add_service(svc)
                .serve_with_incoming(daskrs_proto::net::incoming(listener, None)),
        );
        address
    }

    fn fetcher() -> Fetcher {
        let calls = prometheus::IntCounter::new("calls", "calls").unwrap();
        Fetcher::new(Default::default(), calls)
    }

    #[tokio::test]
    async fn results_wanted_together_go_in_few_calls_and_a_missing_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let held: Vec<u64> = (0..60).filter(|id| *id != 30).collect();
        let address = peer(&held, dir.path()).await;
        let fetcher = fetcher();
        let waits: Vec<_> = (0..60)
            .map(|id| {
                let (f, a) = (fetcher.clone(), vec![address.clone()]);
                tokio::spawn(async move { f.fetch(id, None, &a).await })
            })
            .collect();
        for (id, wait) in waits.into_iter().enumerate() {
            let got = wait.await.unwrap();
            if id == 30 {
                let e = got.unwrap_err();
                assert!(matches!(e, TaskError::PeerGone(_)), "{e:?}");
                assert!(e.to_string().contains("result 30 is not held"), "{e}");
                assert!(e.to_string().contains(&address), "{e}");
            } else {
                assert_eq!(
                    got.unwrap(),
                    Data::opaque(format!("result {id}").into_bytes())
                );
            }
        }
        // One call up to the missing result, one for the rest after it.
        let calls = fetcher.calls.get();
        assert!((2..=4).contains(&calls), "{calls} calls for 60 results");
        // Nothing is left waiting, and a later fetch starts a call of its own.
        assert!(fetcher.waiting.lock().unwrap().is_empty());
        let again = fetcher
            .fetch(7, None, std::slice::from_ref(&address))
            .await
            .unwrap();
        assert_eq!(again, Data::opaque(b"result 7".to_vec()));
        assert_eq!(fetcher.calls.get(), calls + 1);
    }

    #[tokio::test]
    async fn a_result_the_first_holder_lacks_comes_from_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let lacking = peer(&[1], dir.path()).await;
        let holding = peer(&[2], dir.path()).await;
        let fetcher = fetcher();
        let got = fetcher
            .fetch(2, None, &[lacking.clone(), holding.clone()])
            .await
            .unwrap();
        assert_eq!(got, Data::opaque(b"result 2".to_vec()));
        let e = fetcher
            .fetch(3, None, &[lacking.clone(), holding.clone()])
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&lacking) && text.contains(&holding), "{text}");
    }
}
