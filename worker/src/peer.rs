//! The peer data service: other workers (and the scheduler, for clients)
//! fetch results this worker holds, as streams of chunks.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use daskrs_proto::peer_data_server::PeerData;
use daskrs_proto::{DataChunk, FetchManyRequest, FetchRequest, GatheredChunk, chunks};
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::TaskError;
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

/// Fetches a result from the first of `addresses` that has it. Fails as
/// corrupt data if a holder sent bytes that do not decode, else as a lost peer.
pub async fn fetch_from(
    pool: &daskrs_proto::net::Channels,
    id: u64,
    part: Option<u32>,
    addresses: &[String],
) -> Result<crate::data::Data, TaskError> {
    let mut errors = Vec::new();
    let mut corrupt = false;
    for addr in addresses {
        match fetch_one(pool, id, part, addr).await {
            Ok(d) => return Ok(d),
            Err(e) => {
                corrupt |= matches!(e, TaskError::Corrupt(_));
                errors.push(format!("{addr}: {e}"));
            }
        }
    }
    if errors.is_empty() {
        return Err(TaskError::PeerGone(format!("no worker holds result {id}")));
    }
    let message = errors.join("; ");
    Err(if corrupt {
        TaskError::Corrupt(message)
    } else {
        TaskError::PeerGone(message)
    })
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
    let stream = tokio::time::timeout(
        STALL_TIMEOUT,
        client.fetch(FetchRequest { task_id: id, part }),
    )
    .await
    .map_err(|_| gone(format!("no answer within {STALL_TIMEOUT:?}")))?
    .map_err(|s| gone(s.message().to_string()))?
    .into_inner();
    let stream = Box::pin(stream.timeout(STALL_TIMEOUT).map(|item| {
        item.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "stalled for {STALL_TIMEOUT:?}"
            )))
        })
    }));
    let (format, bytes) = chunks::assemble(stream).await.map_err(|e| match e {
        chunks::AssembleError::Format(_) => TaskError::Corrupt(e.to_string()),
        _ => gone(e.to_string()),
    })?;
    Ok(crate::data::Data { format, bytes })
}
