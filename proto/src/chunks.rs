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
    #[error("a chunk of result {index} in a stream of {n}")]
    Index { index: u32, n: usize },
    #[error(transparent)]
    Format(crate::convert::DecodeError),
    #[error(transparent)]
    Status(#[from] tonic::Status),
}

impl From<AssembleError> for tonic::Status {
    /// The transport's own status as it is; a stream that does not add up
    /// is data loss.
    fn from(e: AssembleError) -> Self {
        match e {
            AssembleError::Status(s) => s,
            other => tonic::Status::data_loss(other.to_string()),
        }
    }
}

/// Collects the tagged chunks of `n` results (see `GatheredChunk`) back into
/// one buffer each, checking every announced size.
pub async fn assemble_many<S>(
    stream: S,
    n: usize,
) -> Result<Vec<(DataFormat, Bytes)>, AssembleError>
where
    S: Stream<Item = Result<crate::GatheredChunk, tonic::Status>> + Unpin,
{
    let mut out: Vec<Option<(DataFormat, Bytes)>> = (0..n).map(|_| None).collect();
    assemble_each(stream, n, |index, format, bytes| {
        out[index] = Some((format, bytes));
    })
    .await?;
    Ok(out.into_iter().flatten().collect())
}

/// Like [`assemble_many`], handing each result to `done` (with its position
/// in the request) as soon as its last byte arrives rather than when the
/// stream ends. Results already handed over stay handed over when a later
/// one fails.
pub async fn assemble_each<S, F>(mut stream: S, n: usize, mut done: F) -> Result<(), AssembleError>
where
    S: Stream<Item = Result<crate::GatheredChunk, tonic::Status>> + Unpin,
    F: FnMut(usize, DataFormat, Bytes),
{
    enum Slot {
        Waiting,
        Filling(DataFormat, u64, BytesMut),
        Done(u64),
    }
    let mut slots: Vec<Slot> = (0..n).map(|_| Slot::Waiting).collect();
    let mut left = n;
    while let Some(item) = stream.next().await {
        let crate::GatheredChunk { index, chunk } = item?;
        let chunk = chunk.ok_or(AssembleError::Empty)?;
        let at = index as usize;
        let slot = slots.get_mut(at).ok_or(AssembleError::Index { index, n })?;
        match slot {
            Slot::Done(want) => return Err(AssembleError::Long { want: *want }),
            Slot::Waiting => {
                // The result's first chunk: its format and size.
                let format =
                    crate::convert::data_format(chunk.format).map_err(AssembleError::Format)?;
                let want = chunk.total_bytes;
                if chunk.data.len() as u64 == want {
                    // A small result arrives whole: keep its buffer as it is.
                    *slot = Slot::Done(want);
                    left -= 1;
                    done(at, format, chunk.data);
                    continue;
                }
                if chunk.data.len() as u64 > want {
                    return Err(AssembleError::Long { want });
                }
                // Never trust the announced size for an allocation beyond
                // one chunk's worth.
                let mut buf = BytesMut::with_capacity((want as usize).min(64 * CHUNK_SIZE));
                buf.extend_from_slice(&chunk.data);
                *slot = Slot::Filling(format, want, buf);
            }
            Slot::Filling(format, want, buf) => {
                if buf.len() as u64 + chunk.data.len() as u64 > *want {
                    return Err(AssembleError::Long { want: *want });
                }
                buf.extend_from_slice(&chunk.data);
                if buf.len() as u64 == *want {
                    let (format, want) = (*format, *want);
                    let bytes = std::mem::take(buf).freeze();
                    *slot = Slot::Done(want);
                    left -= 1;
                    done(at, format, bytes);
                }
            }
        }
    }
    if left == 0 {
        return Ok(());
    }
    match slots.iter().find(|s| !matches!(s, Slot::Done(_))) {
        Some(Slot::Filling(_, want, buf)) => Err(AssembleError::Short {
            got: buf.len() as u64,
            want: *want,
        }),
        _ => Err(AssembleError::Empty),
    }
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

    fn tagged(index: u32, chunks: Vec<DataChunk>) -> Vec<crate::GatheredChunk> {
        chunks
            .into_iter()
            .map(|c| crate::GatheredChunk {
                index,
                chunk: Some(c),
            })
            .collect()
    }

    #[tokio::test]
    async fn interleaved_results_assemble_each_in_its_place() {
        let a: Bytes = vec![1u8; 2 * CHUNK_SIZE + 3].into();
        let b: Bytes = vec![2u8; 5].into();
        let c: Bytes = vec![3u8; CHUNK_SIZE + 1].into();
        let mut ta = tagged(0, split(DataFormat::Pickle, a.clone()));
        let tb = tagged(1, split(DataFormat::Arrow, b.clone()));
        let mut tc = tagged(2, split(DataFormat::Opaque, c.clone()));
        // From two holders: c's chunks between a's, b's at the end.
        let mut stream = vec![ta.remove(0), tc.remove(0)];
        stream.extend(ta);
        stream.extend(tc);
        stream.extend(tb);
        let got = assemble_many(futures::stream::iter(stream.into_iter().map(Ok)), 3)
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                (DataFormat::Pickle, a),
                (DataFormat::Arrow, b),
                (DataFormat::Opaque, c)
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_short_or_unasked_result_is_an_error() {
        let one = || tagged(0, split(DataFormat::Opaque, vec![0u8; 9].into()));
        let missing = assemble_many(futures::stream::iter(one().into_iter().map(Ok)), 2).await;
        assert!(matches!(missing, Err(AssembleError::Empty)));
        let unasked = assemble_many(
            futures::stream::iter(tagged(5, split(DataFormat::Opaque, vec![0u8; 9].into())))
                .map(Ok),
            2,
        )
        .await;
        assert!(matches!(
            unasked,
            Err(AssembleError::Index { index: 5, n: 2 })
        ));
        let mut short = tagged(
            0,
            split(DataFormat::Opaque, vec![0u8; CHUNK_SIZE + 9].into()),
        );
        short.pop();
        let short = assemble_many(futures::stream::iter(short.into_iter().map(Ok)), 1).await;
        assert!(matches!(short, Err(AssembleError::Short { .. })));
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
