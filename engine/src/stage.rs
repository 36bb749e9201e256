//! One `sql.stage` task: its payload, and running it on a worker.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::compute::BatchCoalescer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use prost::Message;

use crate::reader::{Codec, InputData};
use crate::s3::S3Access;

/// The task kind name of a stage partition.
pub const KIND: &str = "sql.stage";

/// What a `sql.stage` task carries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StageTask {
    /// The stage's plan fragment (datafusion-proto), the same for every task of the stage.
    #[prost(bytes = "bytes", tag = "1")]
    pub plan: Bytes,
    #[prost(uint32, tag = "2")]
    pub stage: u32,
    /// The partition of the stage this task runs.
    #[prost(uint32, tag = "3")]
    pub partition: u32,
    /// The number of pieces the output is cut into; 0 for one whole output.
    #[prost(uint32, tag = "4")]
    pub pieces: u32,
    /// For each input of the task, in order: which reader partition it feeds.
    #[prost(message, repeated, tag = "5")]
    pub slots: Vec<Slot>,
    /// Write the output there (`COPY ... TO`) instead of returning it.
    #[prost(message, optional, tag = "6")]
    pub write: Option<crate::write::WriteTarget>,
    /// Run no plan: make the files the inputs wrote visible.
    #[prost(bool, tag = "7")]
    pub commit: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Slot {
    #[prost(uint32, tag = "1")]
    pub stage: u32,
    #[prost(uint32, tag = "2")]
    pub partition: u32,
}

/// What a stage task returns.
#[derive(Debug)]
pub enum StageOutput {
    Whole(Bytes),
    Pieces(Vec<Bytes>),
}

/// Runs stage tasks on a worker: one session with the cluster's S3 access,
/// driven on the worker's runtime from the task thread.
pub struct Executor {
    ctx: SessionContext,
    s3: Option<S3Access>,
    runtime: tokio::runtime::Handle,
}

impl Executor {
    /// Call within the worker's runtime; tasks run on it.
    pub fn new(s3: Option<S3Access>) -> Executor {
        let ctx = crate::session::context(s3.clone(), crate::session::Tuning::default());
        crate::session::filter_while_running(ctx.state_ref().write().config_mut().options_mut());
        Executor {
            ctx,
            s3,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Runs one task to its output, blocking the calling (non-runtime) thread.
    pub fn run(
        &self,
        payload: &[u8],
        inputs: Vec<Bytes>,
    ) -> std::result::Result<StageOutput, crate::Error> {
        use crate::Error;
        let task = StageTask::decode(payload)
            .map_err(|e| Error::Corrupt(format!("corrupt sql.stage payload: {e}")))?;
        if task.slots.len() != inputs.len() {
            return Err(Error::Corrupt(format!(
                "the task has {} inputs but its payload describes {}",
                inputs.len(),
                task.slots.len()
            )));
        }
        if task.commit {
            let mut manifests = Vec::new();
            for (i, bytes) in inputs.into_iter().enumerate() {
                let corrupt = |e| Error::Corrupt(format!("input {i} of the commit: {e}"));
                let reader = crate::ipc::reader(bytes).map_err(corrupt)?;
                for b in reader {
                    manifests.push(b.map_err(corrupt)?);
                }
            }
            let done = self
                .runtime
                .block_on(crate::write::commit(manifests, self.s3.as_ref()))?;
            return Ok(one_batch(done)?);
        }
        let mut data: InputData = HashMap::new();
        for (slot, bytes) in task.slots.iter().zip(inputs) {
            data.entry((slot.stage, slot.partition))
                .or_default()
                .push(bytes);
        }
        let task_ctx = self.ctx.task_ctx();
        let plan = fragment(&task, data, &task_ctx)?;
        Ok(self
            .runtime
            .block_on(execute(plan, &task, task_ctx, self.s3.as_ref()))?)
    }

    /// For a task of `payload`, whether it runs its partition of the
    /// stage's plan alone, where the filters its joins learn reach its
    /// scans ([`crate::narrow`]), rather than the plan as it came; `None`
    /// for a task that runs no plan.
    pub fn runs_narrowed(&self, payload: &[u8]) -> std::result::Result<Option<bool>, crate::Error> {
        let task = StageTask::decode(payload)
            .map_err(|e| crate::Error::Corrupt(format!("corrupt sql.stage payload: {e}")))?;
        if task.commit {
            return Ok(None);
        }
        let plan = fragment(&task, HashMap::new(), &self.ctx.task_ctx())?;
        let body = match (task.pieces, plan.downcast_ref::<RepartitionExec>()) {
            (0, _) | (_, None) => plan.clone(),
            (_, Some(r)) => r.input().clone(),
        };
        Ok(Some(
            crate::narrow::narrow(&body, task.partition as usize).is_some(),
        ))
    }
}

/// The stage's plan fragment a task carries, its readers holding `data`.
fn fragment(
    task: &StageTask,
    data: InputData,
    ctx: &TaskContext,
) -> std::result::Result<Arc<dyn ExecutionPlan>, crate::Error> {
    let codec = Codec {
        data: Arc::new(data),
    };
    datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(&task.plan, ctx, &codec)
        .map_err(|e| {
            crate::Error::Corrupt(format!(
                "cannot read the plan of stage {}: {}",
                task.stage,
                crate::error::describe(&e)
            ))
        })
}

impl Executor {
    /// Whether the task's result holds something outside the worker until
    /// it is committed: a writer's manifest.
    pub fn holds_uncommitted(payload: &[u8]) -> bool {
        StageTask::decode(payload).is_ok_and(|t| t.write.is_some() && !t.commit)
    }

    /// A writer's result is dropped: whatever it wrote and nobody
    /// committed is aborted or removed. Blocks the calling thread.
    pub fn release(&self, result: Bytes) {
        let Ok(reader) = crate::ipc::reader(result) else {
            return;
        };
        let manifests: Vec<RecordBatch> = reader.filter_map(|b| b.ok()).collect();
        self.runtime
            .block_on(crate::write::abandon(manifests, self.s3.as_ref()));
    }
}

/// Batches as one Arrow IPC stream.
pub fn ipc_bytes(schema: SchemaRef, batches: &[RecordBatch]) -> Result<Bytes> {
    let mut out = IpcBuffer::new(schema)?;
    for b in batches {
        out.write(b)?;
    }
    out.finish()
}

fn one_batch(batch: RecordBatch) -> Result<StageOutput> {
    Ok(StageOutput::Whole(ipc_bytes(batch.schema(), &[batch])?))
}

async fn execute(
    plan: Arc<dyn ExecutionPlan>,
    task: &StageTask,
    ctx: Arc<TaskContext>,
    s3: Option<&S3Access>,
) -> Result<StageOutput> {
    if let Some(target) = &task.write {
        let schema = plan.schema();
        let (plan, partition) = one_partition(&plan, task.partition, &ctx)?;
        let stream = plan.execute(partition, ctx)?;
        let manifest =
            crate::write::write_partition(target, task.partition, schema, stream, s3).await?;
        return one_batch(manifest);
    }
    let batch_size = ctx.session_config().batch_size();
    if task.pieces == 0 {
        let schema = plan.schema();
        let (plan, partition) = one_partition(&plan, task.partition, &ctx)?;
        let mut stream = plan.execute(partition, ctx)?;
        let mut out = Compacted::new(schema, batch_size)?;
        while let Some(batch) = stream.next().await {
            out.write(batch?)?;
        }
        return Ok(StageOutput::Whole(out.finish()?));
    }
    let Some(r) = plan.downcast_ref::<RepartitionExec>() else {
        return Err(DataFusionError::Internal(format!(
            "stage {} should end in a shuffle but ends in {}",
            task.stage,
            plan.name()
        )));
    };
    let input = r.input().clone();
    let schema = input.schema();
    let inputs = input.output_partitioning().partition_count();
    let partition = task.partition as usize;
    let mut partitioner =
        BatchPartitioner::try_new(r.partitioning().clone(), Time::new(), partition, inputs)?;
    let mut pieces: Vec<Option<Compacted>> = (0..task.pieces).map(|_| None).collect();
    let (input, partition) = one_partition(&input, task.partition, &ctx)?;
    let mut stream = input.execute(partition, ctx)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        partitioner.partition(batch, |p, b| {
            let slot = pieces.get_mut(p).ok_or_else(|| {
                DataFusionError::Internal(format!("shuffle piece {p} out of range"))
            })?;
            if slot.is_none() {
                *slot = Some(Compacted::new(schema.clone(), batch_size)?);
            }
            slot.as_mut().expect("just set").write(b)
        })?;
    }
    let pieces = pieces
        .into_iter()
        .map(|p| p.map_or(Ok(Bytes::new()), Compacted::finish))
        .collect::<Result<Vec<_>>>()?;
    Ok(StageOutput::Pieces(pieces))
}

/// The plan to run for partition `partition` of `plan`, and its partition
/// to execute: narrowed to that one partition when it can be
/// ([`crate::narrow`]), with the filters its joins and top-ks learn while
/// it runs pushed down to the scans and readers they can prune.
fn one_partition(
    plan: &Arc<dyn ExecutionPlan>,
    partition: u32,
    ctx: &TaskContext,
) -> Result<(Arc<dyn ExecutionPlan>, usize)> {
    let partition = partition as usize;
    match crate::narrow::narrow(plan, partition) {
        Some(one) => {
            let one = FilterPushdown::new_post_optimization()
                .optimize(one, ctx.session_config().options())?;
            Ok((one, 0))
        }
        None => Ok((plan.clone(), partition)),
    }
}

/// A task's output as an Arrow IPC stream of full, compact batches.
///
/// Operators hand out batches that share buffers with others: a hash cut
/// yields a small batch per piece, and string views taken from a join's
/// build side or a Parquet page still point into the whole of it. The IPC
/// writer sends every buffer a batch points into, so written as they come
/// such batches repeat the same bytes in each one, many times over. Rows
/// are copied into batches of the session's batch size first, string views
/// with their strings alone.
struct Compacted {
    coalescer: BatchCoalescer,
    out: IpcBuffer,
}

impl Compacted {
    fn new(schema: SchemaRef, batch_size: usize) -> Result<Compacted> {
        Ok(Compacted {
            coalescer: BatchCoalescer::new(schema.clone(), batch_size.max(1)),
            out: IpcBuffer::new(schema)?,
        })
    }

    fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.coalescer.push_batch(batch)?;
        self.drain()
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(b) = self.coalescer.next_completed_batch() {
            self.out.write(&b)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Bytes> {
        self.coalescer.finish_buffered_batch()?;
        self.drain()?;
        self.out.finish()
    }
}

/// An Arrow IPC stream written as batches arrive.
struct IpcBuffer {
    writer: StreamWriter<Vec<u8>>,
}

impl IpcBuffer {
    fn new(schema: SchemaRef) -> Result<IpcBuffer> {
        Ok(IpcBuffer {
            writer: StreamWriter::try_new(Vec::new(), &schema)?,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.writer.write(batch)?)
    }

    fn finish(mut self) -> Result<Bytes> {
        self.writer.finish()?;
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringViewArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn outputs_send_each_string_once_not_the_buffers_it_shares() {
        // Like a join's output: every batch takes a few rows of one large build side.
        let build = StringViewArray::from_iter_values(
            (0..10_000).map(|i| format!("customer number {i:>20}")),
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            "name",
            DataType::Utf8View,
            false,
        )]));
        let mut out = Compacted::new(schema.clone(), 8192).unwrap();
        let mut strings = 0;
        for b in 0..100u32 {
            let rows = UInt32Array::from_iter_values((0..10).map(|i| b * 10 + i));
            let taken = arrow::compute::take(&build, &rows, None).unwrap();
            strings += taken.len() * 36;
            out.write(RecordBatch::try_new(schema.clone(), vec![taken]).unwrap())
                .unwrap();
        }
        let bytes = out.finish().unwrap();
        assert!(
            bytes.len() < 4 * strings,
            "{} bytes written for {strings} bytes of strings",
            bytes.len()
        );
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 1000);
    }
}
