//! Arrow IPC streams read from memory: results from peers, stage outputs,
//! the schemas clients send. Two guards stand between such bytes and
//! Arrow's reader. A stream's messages say how long they are, and the
//! reader allocates what they say before it finds the bytes missing; so
//! the framing is checked against the buffer first, and a few corrupt
//! bytes cost an error, never gigabytes. And the reader panics on some
//! malformed schemas and batches (unknown types, children missing); so
//! each step runs under `catch_unwind`, and a panic becomes an error that
//! costs the one result, never the worker.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;

/// The batches of a stream held in memory (see the module's guards).
pub struct Reader<B: AsRef<[u8]>> {
    schema: SchemaRef,
    /// None once a batch failed: nothing after it is read.
    inner: Option<StreamReader<Cursor<B>>>,
}

impl<B: AsRef<[u8]>> Reader<B> {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl<B: AsRef<[u8]>> Iterator for Reader<B> {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let inner = self.inner.as_mut()?;
        // The reader is dropped after a panic, so no broken state is seen.
        match catch_unwind(AssertUnwindSafe(|| inner.next())) {
            Ok(Some(Err(e))) => {
                self.inner = None;
                Some(Err(e))
            }
            Ok(next) => next,
            Err(panic) => {
                self.inner = None;
                Some(Err(refused(panic)))
            }
        }
    }
}

/// A reader of the stream in `bytes`, once every message's metadata and
/// body are known to lie within them.
pub fn reader<B: AsRef<[u8]>>(bytes: B) -> Result<Reader<B>, ArrowError> {
    check_frames(bytes.as_ref()).map_err(ArrowError::IpcError)?;
    let inner = catch_unwind(AssertUnwindSafe(|| {
        StreamReader::try_new(Cursor::new(bytes), None)
    }))
    .map_err(refused)??;
    Ok(Reader {
        schema: inner.schema(),
        inner: Some(inner),
    })
}

fn refused(panic: Box<dyn std::any::Any + Send>) -> ArrowError {
    let what = daskrs_core::panic_message(panic.as_ref()).unwrap_or("a malformed message");
    ArrowError::IpcError(format!("the stream is malformed: {what}"))
}

/// Walks the messages of a stream: an optional continuation marker, the
/// metadata's length (i32), the metadata (a flatbuffer naming the body's
/// length), the body; a length of 0 ends the stream. Bytes that end at a
/// message boundary are left to the reader to judge.
pub fn check_frames(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let (len, head) = match rest {
            [0xff, 0xff, 0xff, 0xff, a, b, c, d, ..] => (i32::from_le_bytes([*a, *b, *c, *d]), 8),
            [a, b, c, d, ..] => (i32::from_le_bytes([*a, *b, *c, *d]), 4),
            _ => return Err(format!("a message header is cut short at byte {at}")),
        };
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len)
            .map_err(|_| format!("the message at byte {at} has a negative length ({len})"))?;
        let start = at + head;
        let meta_end = start
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                format!(
                    "the message at byte {at} claims {len} bytes of metadata; {} remain",
                    bytes.len() - start.min(bytes.len())
                )
            })?;
        let message = arrow::ipc::root_as_message(&bytes[start..meta_end])
            .map_err(|e| format!("the message at byte {at} is unreadable: {e}"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| {
            format!(
                "the message at byte {at} has a negative body length ({})",
                message.bodyLength()
            )
        })?;
        at = meta_end
            .checked_add(body)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                format!(
                    "the message at byte {at} claims a body of {body} bytes; {} remain",
                    bytes.len() - meta_end
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;

    use super::*;

    fn stream() -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut w = StreamWriter::try_new(&mut buf, &schema).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        buf
    }

    #[test]
    fn a_whole_stream_reads() {
        let rows: usize = reader(stream())
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 6);
    }

    /// Found by the worker's fuzz target `peer_results`: a result in
    /// pieces read as a stream claimed 1.3 GB of metadata with its magic
    /// bytes, and the reader allocated it before failing.
    #[test]
    fn a_claimed_length_beyond_the_bytes_is_refused_before_reading() {
        let mut bytes = b"DSKP".to_vec();
        bytes.extend_from_slice(&[2, 0, 0, 0]);
        let e = reader(&bytes[..]).err().unwrap().to_string();
        assert!(
            e.contains("claims 1347113796 bytes of metadata; 4 remain"),
            "{e}"
        );
        let mut s = stream();
        // The first message's metadata length, past the continuation marker.
        s[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(reader(s).is_err());
    }

    /// Found by the worker's fuzz target `peer_results`: one byte of the
    /// schema's flatbuffer zeroed made Arrow's reader unwrap a field that
    /// is not there.
    #[test]
    fn a_schema_that_panics_the_reader_is_an_error() {
        let mut s = stream();
        s[28] = 0;
        let e = reader(s).err().unwrap().to_string();
        assert!(e.contains("the stream is malformed"), "{e}");
    }

    #[test]
    fn every_cut_of_a_stream_is_an_error_or_a_shorter_stream() {
        let s = stream();
        let whole = Int64Array::from(vec![1, 2, 3]);
        for cut in 0..s.len() {
            if let Ok(r) = reader(&s[..cut]) {
                // What reads is a prefix of the stream's batches, whole.
                let read: Vec<RecordBatch> = r.map_while(|b| b.ok()).collect();
                assert!(read.len() <= 2, "cut at {cut}");
                for b in read {
                    let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    assert_eq!(v, &whole, "cut at {cut}");
                }
            }
        }
    }
}
