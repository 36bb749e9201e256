//! The leaf that stands where a stage boundary was cut out of a plan: it
//! yields the Arrow IPC streams that upstream stage tasks produced, which the
//! worker fetched as the task's inputs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use prost::Message;

/// Which upstream output a reader partition is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Partition q is piece q of every upstream task (a hash or round-robin shuffle).
    Pieces,
    /// Partition q is the whole output of upstream task q.
    Direct,
}

/// The IPC streams a task holds for each reader partition, by
/// (upstream stage, reader partition).
pub type InputData = HashMap<(u32, u32), Vec<Bytes>>;

#[derive(Debug)]
pub struct StageReaderExec {
    stage: u32,
    layout: Layout,
    schema: SchemaRef,
    partitions: usize,
    data: Arc<InputData>,
    properties: Arc<PlanProperties>,
}

impl StageReaderExec {
    pub fn new(
        stage: u32,
        layout: Layout,
        schema: SchemaRef,
        partitions: usize,
        data: Arc<InputData>,
    ) -> StageReaderExec {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        StageReaderExec {
            stage,
            layout,
            schema,
            partitions,
            data,
            properties: Arc::new(properties),
        }
    }

    pub fn stage(&self) -> u32 {
        self.stage
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }
}

impl DisplayAs for StageReaderExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let how = match self.layout {
            Layout::Pieces => "shuffled",
            Layout::Direct => "direct",
        };
        write!(
            f,
            "StageReaderExec: stage={}, partitions={}, {how}",
            self.stage, self.partitions
        )
    }
}

impl ExecutionPlan for StageReaderExec {
    fn name(&self) -> &str {
        "StageReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "StageReaderExec has no children".into(),
            ));
        }
        Ok(self)
    }

    fn execute(&self, partition: usize, _: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let key = (self.stage, partition as u32);
        let Some(streams) = self.data.get(&key).cloned() else {
            return Err(DataFusionError::Internal(format!(
                "this task was given no input for partition {partition} of stage {}",
                self.stage
            )));
        };
        let schema = self.schema.clone();
        let batches = streams
            .into_iter()
            .filter(|b| !b.is_empty())
            .flat_map(move |bytes| read_ipc(bytes, schema.clone()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        )))
    }
}

/// The batches of one IPC stream, in the reader's schema.
fn read_ipc(
    bytes: Bytes,
    schema: SchemaRef,
) -> Box<dyn Iterator<Item = Result<RecordBatch>> + Send> {
    let reader = match crate::ipc::reader(bytes) {
        Ok(r) => r,
        Err(e) => {
            return Box::new(std::iter::once(Err(DataFusionError::Execution(format!(
                "corrupt stage output: {e}"
            )))));
        }
    };
    Box::new(reader.map(move |b| {
        let b = b.map_err(|e| DataFusionError::Execution(format!("corrupt stage output: {e}")))?;
        // Same columns, but field names and nullability as the plan expects.
        RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| {
            DataFusionError::Execution(format!("stage output does not fit its reader: {e}"))
        })
    }))
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReaderNode {
    #[prost(uint32, tag = "1")]
    stage: u32,
    #[prost(bool, tag = "2")]
    direct: bool,
    #[prost(uint32, tag = "3")]
    partitions: u32,
    #[prost(message, optional, tag = "4")]
    schema: Option<datafusion_proto::protobuf::Schema>,
}

/// Encodes readers into plan fragments and decodes them with the data a
/// task was given.
#[derive(Debug, Default)]
pub struct Codec {
    pub data: Arc<InputData>,
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _: &TaskContext,
        _: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal(
                "a stage reader has no inputs".into(),
            ));
        }
        let node = ReaderNode::decode(buf)
            .map_err(|e| DataFusionError::Internal(format!("corrupt stage reader: {e}")))?;
        let schema: arrow::datatypes::Schema = node
            .schema
            .as_ref()
            .ok_or_else(|| DataFusionError::Internal("stage reader without schema".into()))?
            .try_into()?;
        let layout = if node.direct {
            Layout::Direct
        } else {
            Layout::Pieces
        };
        Ok(Arc::new(StageReaderExec::new(
            node.stage,
            layout,
            Arc::new(schema),
            node.partitions as usize,
            self.data.clone(),
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(r) = node.downcast_ref::<StageReaderExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run distributed",
                node.name()
            )));
        };
        let msg = ReaderNode {
            stage: r.stage,
            direct: r.layout == Layout::Direct,
            partitions: r.partitions as u32,
            schema: Some(r.schema.as_ref().try_into()?),
        };
        msg.encode(buf)
            .map_err(|e| DataFusionError::Internal(e.to_string()))
    }
}
