//! `COPY (query) TO ...`: each task of the final stage writes its partition
//! as one file, unseen until a last task commits them all.
//!
//! On S3 a writer uploads its object as a multipart upload it does not
//! complete; the commit completes every upload. On a local file system a
//! writer writes a hidden temporary file next to its target; the commit
//! renames them. A failed query leaves no new file visible: a failing writer
//! aborts its own upload or removes its file, and a writer that did finish
//! has its upload aborted or its file removed when the worker drops its
//! manifest before a commit read it; a commit that fails lets go of what it
//! could not make visible. Only a worker that dies or loses the scheduler while
//! holding a manifest leaves an incomplete upload (a commit elsewhere may
//! still be completing it), which S3 never lists and a bucket lifecycle rule
//! (AbortIncompleteMultipartUpload) removes.

use std::io::Write as _;
use std::sync::Arc;

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;

use crate::s3::{S3Access, local_files};

/// How daskrs writes Parquet: ZSTD, and row groups small enough to split a
/// file across tasks and to prune.
pub fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build()
}

/// Writes batches as one Parquet file.
pub fn write_parquet(
    file: std::fs::File,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> std::result::Result<(), datafusion::parquet::errors::ParquetError> {
    let mut w = ArrowWriter::try_new(file, schema, Some(parquet_properties()))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(())
}

/// Where and how a final stage writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteTarget {
    /// `s3://bucket/prefix/` or a local directory; or one file when the
    /// query has a single partition.
    #[prost(string, tag = "1")]
    pub url: String,
    /// parquet, csv or json.
    #[prost(string, tag = "2")]
    pub format: String,
    /// Makes temporary names unique to this query.
    #[prost(string, tag = "3")]
    pub query: String,
    /// The URL names a directory.
    #[prost(bool, tag = "4")]
    pub directory: bool,
}

pub fn extension(format: &str) -> &'static str {
    match format {
        "csv" => "csv",
        "json" => "json",
        _ => "parquet",
    }
}

enum Place {
    S3 { bucket: String, key: String },
    Local(std::path::PathBuf),
}

fn place(t: &WriteTarget, partition: u32) -> Result<Place> {
    let name = if t.directory {
        Some(format!("part-{partition:05}.{}", extension(&t.format)))
    } else {
        None
    };
    if let Some(rest) = t.url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(DataFusionError::Plan(format!("{} names no bucket", t.url)));
        }
        let key = match name {
            Some(n) => format!("{}/{n}", prefix.trim_end_matches('/'))
                .trim_start_matches('/')
                .to_string(),
            None => prefix.to_string(),
        };
        return Ok(Place::S3 {
            bucket: bucket.to_string(),
            key,
        });
    }
    let base = t.url.strip_prefix("file://").unwrap_or(&t.url);
    let path = match name {
        Some(n) => std::path::Path::new(base).join(n),
        None => std::path::PathBuf::from(base),
    };
    Ok(Place::Local(path))
}

/// What a writer hands to the commit.
struct Pending {
    target: String,
    temp: String,
    upload: String,
    parts: Vec<String>,
    rows: u64,
}

fn manifest_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("target", DataType::Utf8, false),
        Field::new("temp", DataType::Utf8, false),
        Field::new("upload", DataType::Utf8, false),
        Field::new("parts", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

/// S3 parts other than the last must be at least 5 MiB.
const PART_BYTES: usize = 8 << 20;

/// A byte buffer shared with the format writer that fills it, so full parts
/// can be taken out while the file is still being written.
#[derive(Clone, Default)]
struct Spool(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Spool {
    fn take(&self, at_least: usize) -> Option<Vec<u8>> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (b.len() >= at_least).then(|| std::mem::take(&mut *b))
    }
}

/// Turns batches into the bytes of one file, handing out full parts as it goes.
struct Encoder {
    spool: Spool,
    writer: Format,
}

enum Format {
    Parquet(ArrowWriter<Spool>),
    Csv(arrow::csv::Writer<Spool>),
    Json(arrow::json::LineDelimitedWriter<Spool>),
}

impl Encoder {
    fn new(format: &str, schema: SchemaRef) -> Result<Encoder> {
        let spool = Spool::default();
        let writer = match format {
            "csv" => Format::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(spool.clone()),
            ),
            "json" => Format::Json(arrow::json::LineDelimitedWriter::new(spool.clone())),
            _ => Format::Parquet(ArrowWriter::try_new(
                spool.clone(),
                schema,
                Some(parquet_properties()),
            )?),
        };
        Ok(Encoder { spool, writer })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match &mut self.writer {
            Format::Parquet(w) => w.write(batch)?,
            Format::Csv(w) => w.write(batch)?,
            Format::Json(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// Bytes ready to be sent, when there are enough of them.
    fn take_full(&mut self) -> Option<Vec<u8>> {
        self.spool.take(PART_BYTES)
    }

    fn finish(self) -> Result<Vec<u8>> {
        match self.writer {
            Format::Parquet(w) => {
                w.close()?;
            }
            Format::Csv(w) => drop(w),
            Format::Json(mut w) => w.finish()?,
        }
        Ok(self.spool.take(0).unwrap_or_default())
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Writes one partition's batches to its target, unseen; returns the
/// manifest the commit needs.
pub async fn write_partition(
    target: &WriteTarget,
    partition: u32,
    schema: SchemaRef,
    mut stream: datafusion::execution::SendableRecordBatchStream,
    s3: Option<&S3Access>,
) -> Result<RecordBatch> {
    let mut encoder = Encoder::new(&target.format, schema)?;
    let mut rows = 0u64;
    let pending = match place(target, partition)? {
        Place::S3 { bucket, key } => {
            let s3 = s3.ok_or_else(|| {
                DataFusionError::Plan("S3 access is not configured on this worker".into())
            })?;
            let store = s3.multipart_store(&bucket)?;
            let path = ObjectPath::from(key.as_str());
            let id = store.create_multipart(&path).await.map_err(external)?;
            let guard = Unfinished(Some(Leftover::Upload {
                store: store.clone(),
                path: path.clone(),
                id: id.clone(),
            }));
            let upload = async {
                let mut parts: Vec<PartId> = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    rows += batch.num_rows() as u64;
                    encoder.write(&batch)?;
                    if let Some(bytes) = encoder.take_full() {
                        let part = store
                            .put_part(&path, &id, parts.len(), bytes.into())
                            .await
                            .map_err(external)?;
                        parts.push(part);
                    }
                }
                let last = encoder.finish()?;
                let part = store
                    .put_part(&path, &id, parts.len(), last.into())
                    .await
                    .map_err(external)?;
                parts.push(part);
                Ok::<_, DataFusionError>(parts)
            }
            .await;
            guard.finished();
            match upload {
                Ok(parts) => Pending {
                    target: format!("s3://{bucket}/{key}"),
                    temp: String::new(),
                    upload: id,
                    parts: parts.into_iter().map(|p| p.content_id).collect(),
                    rows,
                },
                Err(e) => {
                    let _ = store.abort_multipart(&path, &id).await;
                    return Err(e);
                }
            }
        }
        Place::Local(path) => {
            local_files(s3).check_file(&path)?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf();
            std::fs::create_dir_all(&dir).map_err(|e| {
                DataFusionError::Execution(format!("cannot create {}: {e}", dir.display()))
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let temp = dir.join(format!(".{name}.{}.tmp", target.query));
            let guard = Unfinished(Some(Leftover::File(temp.clone())));
            let written = async {
                let mut file = std::fs::File::create(&temp)?;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(std::io::Error::other)?;
                    rows += batch.num_rows() as u64;
                    encoder.write(&batch).map_err(std::io::Error::other)?;
                    if let Some(bytes) = encoder.take_full() {
                        file.write_all(&bytes)?;
                    }
                }
                let last = encoder.finish().map_err(std::io::Error::other)?;
                file.write_all(&last)?;
                file.sync_all()
            }
            .await;
            guard.finished();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(DataFusionError::Execution(format!(
                    "writing {}: {e}",
                    path.display()
                )));
            }
            Pending {
                target: path.display().to_string(),
                temp: temp.display().to_string(),
                upload: String::new(),
                parts: Vec::new(),
                rows,
            }
        }
    };
    Ok(RecordBatch::try_new(
        manifest_schema(),
        vec![
            Arc::new(StringArray::from(vec![pending.target])),
            Arc::new(StringArray::from(vec![pending.temp])),
            Arc::new(StringArray::from(vec![pending.upload])),
            Arc::new(StringArray::from(vec![pending.parts.join(",")])),
            Arc::new(UInt64Array::from(vec![pending.rows])),
        ],
    )?)
}

/// What a writer has made so far and must not leave behind if it is dropped
/// before it finishes: its task was cancelled because the query failed
/// elsewhere.
enum Leftover {
    File(std::path::PathBuf),
    Upload {
        store: object_store::aws::AmazonS3,
        path: ObjectPath,
        id: String,
    },
}

struct Unfinished(Option<Leftover>);

impl Unfinished {
    /// The writer ran to its end: it handles its output itself from here.
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Leftover::File(temp)) => {
                let _ = std::fs::remove_file(temp);
            }
            Some(Leftover::Upload { store, path, id }) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = store.abort_multipart(&path, &id).await;
                    });
                }
            }
            None => {}
        }
    }
}

/// Lets go of what a writer's manifest holds that was never made visible:
/// aborts its upload, removes its temporary file. For a manifest whose
/// files were committed there is nothing left to let go of, and this does
/// nothing (S3 no longer knows the upload; the file was renamed).
pub async fn abandon(manifests: Vec<RecordBatch>, s3: Option<&S3Access>) {
    for b in &manifests {
        let col = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>();
        let (Some(target), Some(temp), Some(upload)) = (col(0), col(1), col(2)) else {
            tracing::warn!("not a write manifest; nothing released");
            continue;
        };
        for r in 0..b.num_rows() {
            let (target, temp, upload) = (target.value(r), temp.value(r), upload.value(r));
            if let Some(rest) = target.strip_prefix("s3://")
                && !upload.is_empty()
            {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                let Some(store) = s3.and_then(|s3| s3.multipart_store(bucket).ok()) else {
                    continue;
                };
                match store
                    .abort_multipart(&ObjectPath::from(key), &upload.to_string())
                    .await
                {
                    // Some servers answer the abort of a committed upload
                    // with success too: nothing more can be said here.
                    Ok(()) => tracing::debug!(%target, "let go of the upload of a write"),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => tracing::debug!(%target, error = %e, "aborting an upload"),
                }
            } else if !temp.is_empty() {
                if !local_files(s3).allows_file(std::path::Path::new(temp)) {
                    tracing::warn!(%temp, "not removing a file outside the allowed local roots");
                    continue;
                }
                match std::fs::remove_file(temp) {
                    Ok(()) => {
                        tracing::info!(%target, "removed the file of a write that was not committed")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(%temp, error = %e, "cannot remove a temporary file"),
                }
            }
        }
    }
}

/// Makes every written file visible; returns one row: files and rows written.
/// When one cannot be made visible, the query fails and the files not yet
/// made visible are let go of (the writers leave them to the commit once it
/// has read their manifests).
pub async fn commit(manifests: Vec<RecordBatch>, s3: Option<&S3Access>) -> Result<RecordBatch> {
    match commit_all(&manifests, s3).await {
        Ok(done) => Ok(done),
        Err(e) => {
            abandon(manifests, s3).await;
            Err(e)
        }
    }
}

async fn commit_all(manifests: &[RecordBatch], s3: Option<&S3Access>) -> Result<RecordBatch> {
    let (mut files, mut rows) = (0u64, 0u64);
    for b in manifests {
        let col = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Internal("corrupt write manifest".into()))
        };
        let (target, temp, upload, parts) = (col(0)?, col(1)?, col(2)?, col(3)?);
        let counts = b
            .column(4)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| DataFusionError::Internal("corrupt write manifest".into()))?;
        for r in 0..b.num_rows() {
            let target = target.value(r);
            if let Some(rest) = target.strip_prefix("s3://") {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                let s3 = s3.ok_or_else(|| {
                    DataFusionError::Plan("S3 access is not configured on this worker".into())
                })?;
                let store = s3.multipart_store(bucket)?;
                let ids = parts
                    .value(r)
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| PartId {
                        content_id: p.to_string(),
                    })
                    .collect();
                store
                    .complete_multipart(&ObjectPath::from(key), &upload.value(r).to_string(), ids)
                    .await
                    .map_err(external)?;
            } else {
                // A manifest names what it moves: only where writes may go.
                let local = local_files(s3);
                local.check_file(std::path::Path::new(temp.value(r)))?;
                local.check_file(std::path::Path::new(target))?;
                std::fs::rename(temp.value(r), target).map_err(|e| {
                    DataFusionError::Execution(format!("cannot move {} into place: {e}", target))
                })?;
            }
            files += 1;
            rows += counts.value(r);
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("files", DataType::UInt64, false),
            Field::new("rows", DataType::UInt64, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(vec![files])),
            Arc::new(UInt64Array::from(vec![rows])),
        ],
    )?)
}
