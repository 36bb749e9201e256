//! Results cross the network as streams of bounded chunks, never as one message.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use daskrs_core::DataFormat;

use crate::DataChunk;

/// Size of one chunk of a result on the wire.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Splits a result into chunks; the first carries format and total size.
/// Slicing `Bytes` shares the buffer, so nothing is copied.
pub fn split(format: DataFormat, data: Bytes) -> Vec<DataChunk> {
    let total = data.len() as u64;
    let mut out = Vec::with_capacity(data.len() / CHUNK_SIZE + 1);
    let mut offset = 0;
    loop {
        let end = (offset + CHUNK_SIZE).min(data.len());
        out.push(DataChunk {
            format: if offset == 0 {
                crate::DataFormat::from(format) as i32
            } else {
                0
            },
            total_bytes: if offset == 0 { total } else { 0 },
            data: data.slice(offset..end),
        });
        offset = end;
        if offset >= data.len() {
            return out;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("stream ended with {got} of {want} bytes")]
    Short { got: u64, want: u64 },
    #[error("stream sent more than the announced {want} bytes")]
    Long { want: u64 },
    #[error("stream was empty")]
    Empty,
    #[error(transparent)]
    Format(crate::convert::DecodeError),
    #[error(transparent)]
    Status(#[from] tonic::Status),
}

/// Collects a chunk stream back into one buffer, checking the announced size.
pub async fn assemble<S>(mut stream: S) -> Result<(DataFormat, Bytes), AssembleError>
where
    S: Stream<Item = Result<DataChunk, tonic::Status>> + Unpin,
{
    let first = stream.next().await.ok_or(AssembleError::Empty)??;
    let format = crate::convert::data_format(first.format).map_err(AssembleError::Format)?;
    let want = first.total_bytes;
    if first.data.len() as u64 == want {
        // A small result arrives whole: keep its buffer as it is.
        if let Some(extra) = stream.next().await {
            extra?;
            return Err(AssembleError::Long { want });
        }
        return Ok((format, first.data));
    }
    // Never trust the announced size for an allocation beyond one chunk's worth.
    let mut buf = BytesMut::with_capacity((want as usize).min(64 * CHUNK_SIZE));
    buf.extend_from_slice(&first.data);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.data.len() as u64 > want {
            return Err(AssembleError::Long { want });
        }
        buf.extend_from_slice(&chunk.data);
    }
    if buf.len() as u64 != want {
        return Err(AssembleError::Short {
            got: buf.len() as u64,
            want,
        });
    }
    Ok((format, buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn split_and_assemble_round_trip() {
        for len in [
            0usize,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 17,
        ] {
            let data: Bytes = (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
            let chunks = split(DataFormat::Arrow, data.clone());
            assert!(chunks.iter().all(|c| c.data.len() <= CHUNK_SIZE));
            let (fmt, back) = assemble(futures::stream::iter(chunks.into_iter().map(Ok)))
                .await
                .unwrap();
            assert_eq!(fmt, DataFormat::Arrow);
            assert_eq!(back, data);
        }
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error() {
        let mut chunks = split(
            DataFormat::Opaque,
            Bytes::from(vec![7u8; 2 * CHUNK_SIZE + 5]),
        );
        chunks.pop();
        let e = assemble(futures::stream::iter(chunks.into_iter().map(Ok)))
            .await
            .unwrap_err();
        assert!(matches!(e, AssembleError::Short { .. }), "{e}");
    }
}
