//! The leaf that stands where a stage boundary was cut out of a plan: it
//! yields the Arrow IPC streams that upstream stage tasks produced, which the
//! worker fetched as the task's inputs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{
    AcrossPartitions, ConstExpr, DynamicFilterTracking, EquivalenceProperties, LexOrdering,
    PhysicalExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::from_proto::{
    parse_physical_expr_with_converter, parse_physical_exprs, parse_physical_sort_exprs,
    parse_protobuf_partitioning,
};
use datafusion_proto::physical_plan::to_proto::{
    serialize_partitioning, serialize_physical_expr_with_converter, serialize_physical_exprs,
    serialize_physical_sort_exprs,
};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
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

#[derive(Debug, Clone)]
pub struct StageReaderExec {
    stage: u32,
    layout: Layout,
    schema: SchemaRef,
    partitions: usize,
    data: Arc<InputData>,
    /// How the plan this reader stands for laid out its partitions, and
    /// what it knew of their rows (see [`StageReaderExec::shaped`]), which
    /// the plan above it may rely on.
    partitioning: Partitioning,
    known: Known,
    properties: Arc<PlanProperties>,
    /// Filters a join or a top-k above learns while it runs (dynamic
    /// filters), pushed down in the worker: rows they reject are dropped
    /// as they are read.
    filters: Vec<Arc<dyn PhysicalExpr>>,
    /// Rows read, and rows the filters dropped.
    metrics: ExecutionPlanMetricsSet,
}

/// What the plan above a reader may know of the rows it yields, kept from
/// the plan it stands for.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// How each partition is sorted.
    pub ordering: Option<LexOrdering>,
    /// Expressions of one value in each partition (or in all of them).
    pub constants: Vec<ConstExpr>,
    /// Expressions equal to each other in every row.
    pub equal: Vec<Vec<Arc<dyn PhysicalExpr>>>,
}

impl Known {
    /// What holds of each partition of `plan` read as it was made: all it knew.
    pub fn within_partitions(plan: &Arc<dyn ExecutionPlan>) -> Known {
        Known {
            ordering: plan.output_ordering().cloned(),
            ..Known::across_exchange(plan.equivalence_properties(), true)
        }
    }

    /// What still holds of `eq`'s rows once an exchange has mixed its
    /// partitions: equalities in a row, and values one in every partition
    /// (`heterogeneous`: also those one in each partition, when partitions
    /// stay whole); no ordering.
    pub fn across_exchange(eq: &EquivalenceProperties, heterogeneous: bool) -> Known {
        Known {
            ordering: None,
            constants: eq
                .constants()
                .into_iter()
                .filter(|c| {
                    heterogeneous || matches!(c.across_partitions, AcrossPartitions::Uniform(_))
                })
                .collect(),
            equal: eq
                .eq_group()
                .iter()
                .filter(|class| class.len() > 1)
                .map(|class| class.iter().cloned().collect())
                .collect(),
        }
    }

    fn equivalences(&self, schema: &SchemaRef) -> Result<EquivalenceProperties> {
        let mut eq = match &self.ordering {
            Some(o) => EquivalenceProperties::new_with_orderings(schema.clone(), [o.clone()]),
            None => EquivalenceProperties::new(schema.clone()),
        };
        for class in &self.equal {
            for other in class.iter().skip(1) {
                eq.add_equal_conditions(class[0].clone(), other.clone())?;
            }
        }
        eq.add_constants(self.constants.iter().cloned())?;
        Ok(eq)
    }
}

impl StageReaderExec {
    pub fn new(
        stage: u32,
        layout: Layout,
        schema: SchemaRef,
        partitions: usize,
        data: Arc<InputData>,
    ) -> StageReaderExec {
        let partitioning = Partitioning::UnknownPartitioning(partitions);
        StageReaderExec {
            properties: properties(EquivalenceProperties::new(schema.clone()), &partitioning),
            stage,
            layout,
            schema,
            partitions,
            data,
            partitioning,
            known: Known::default(),
            filters: Vec::new(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The reader, saying its partitions are laid out by `partitioning`
    /// and what is `known` of their rows, as of the plan it stands for: a
    /// shuffle's pieces are hash partitioned as its exchange cut them, so a
    /// union of two such readers still interleaves; a stage's whole outputs
    /// keep the order their task made them in, so a merge above still
    /// finds its input sorted; and a column a filter below fixed to one
    /// value stays fixed, so a window partitioned by it needs no sort on it.
    pub fn shaped(mut self, partitioning: Partitioning, known: Known) -> Result<StageReaderExec> {
        if partitioning.partition_count() != self.partitions {
            return Err(DataFusionError::Internal(format!(
                "a reader of {} partitions cannot be laid out as {partitioning}",
                self.partitions
            )));
        }
        self.properties = properties(known.equivalences(&self.schema)?, &partitioning);
        self.partitioning = partitioning;
        self.known = known;
        Ok(self)
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

fn properties(
    equivalences: EquivalenceProperties,
    partitioning: &Partitioning,
) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        equivalences,
        partitioning.clone(),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
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
        )?;
        if !self.filters.is_empty() {
            let filters: Vec<String> = self.filters.iter().map(|e| e.to_string()).collect();
            write!(f, ", filters=[{}]", filters.join(", "))?;
        }
        Ok(())
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
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in &self.filters {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        pushed: ChildPushdownResult,
        _: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        // Only the filters that exist while the plan runs: any other a
        // stage boundary's planning already placed.
        let mut taken = Vec::with_capacity(pushed.parent_filters.len());
        let mut accepted = Vec::new();
        for f in pushed.parent_filters {
            if phase == FilterPushdownPhase::Post
                && DynamicFilterTracking::classify(&f.filter).contains_dynamic_filter()
            {
                taken.push(PushedDown::Yes);
                accepted.push(f.filter);
            } else {
                taken.push(PushedDown::No);
            }
        }
        if accepted.is_empty() {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                taken,
            ));
        }
        let mut reader = self.clone();
        reader.metrics = ExecutionPlanMetricsSet::new();
        reader.filters.extend(accepted);
        Ok(
            FilterPushdownPropagation::with_parent_pushdown_result(taken)
                .with_updated_node(Arc::new(reader) as Arc<dyn ExecutionPlan>),
        )
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
        let filters = self.filters.clone();
        let read = MetricBuilder::new(&self.metrics).counter("rows_read", partition);
        let dropped = MetricBuilder::new(&self.metrics).counter("rows_filtered", partition);
        let batches = streams
            .into_iter()
            .filter(|b| !b.is_empty())
            .flat_map(move |bytes| read_ipc(bytes, schema.clone()))
            .map(move |b| {
                let b = b?;
                let rows = b.num_rows();
                read.add(rows);
                let kept = keep(b, &filters)?;
                dropped.add(rows - kept.num_rows());
                Ok(kept)
            })
            .filter(|b| b.as_ref().map_or(true, |b| b.num_rows() > 0));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        )))
    }
}

/// The rows of `batch` that every filter keeps.
fn keep(batch: RecordBatch, filters: &[Arc<dyn PhysicalExpr>]) -> Result<RecordBatch> {
    let mut batch = batch;
    for f in filters {
        let rows = batch.num_rows();
        if rows == 0 {
            break;
        }
        let mask = f.evaluate(&batch)?.into_array(rows)?;
        let mask = mask.as_boolean_opt().ok_or_else(|| {
            DataFusionError::Internal(format!("a pushed filter yields {}", mask.data_type()))
        })?;
        if mask.true_count() < rows {
            batch = arrow::compute::filter_record_batch(&batch, mask)?;
        }
    }
    Ok(batch)
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
    #[prost(message, optional, tag = "5")]
    partitioning: Option<datafusion_proto::protobuf::Partitioning>,
    #[prost(message, repeated, tag = "6")]
    ordering: Vec<datafusion_proto::protobuf::PhysicalSortExprNode>,
    #[prost(message, repeated, tag = "7")]
    constants: Vec<ConstantNode>,
    #[prost(message, repeated, tag = "8")]
    equal: Vec<ExprsNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConstantNode {
    #[prost(message, optional, tag = "1")]
    expr: Option<datafusion_proto::protobuf::PhysicalExprNode>,
    /// One value in every partition (else one in each).
    #[prost(bool, tag = "2")]
    uniform: bool,
    /// That value, when known.
    #[prost(message, optional, tag = "3")]
    value: Option<datafusion_proto::protobuf::ScalarValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExprsNode {
    #[prost(message, repeated, tag = "1")]
    exprs: Vec<datafusion_proto::protobuf::PhysicalExprNode>,
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
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
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
        let decode = PhysicalPlanDecodeContext::new(ctx, self);
        let partitioning =
            parse_protobuf_partitioning(node.partitioning.as_ref(), &decode, &schema, converter)?;
        let ordering = parse_physical_sort_exprs(&node.ordering, &decode, &schema, converter)?;
        let expr = |e: &Option<datafusion_proto::protobuf::PhysicalExprNode>| {
            let e = e.as_ref().ok_or_else(|| {
                DataFusionError::Internal("stage reader: an empty expression".into())
            })?;
            parse_physical_expr_with_converter(e, &schema, &decode, converter)
        };
        let mut constants = Vec::with_capacity(node.constants.len());
        for c in &node.constants {
            let across = match (c.uniform, &c.value) {
                (false, _) => AcrossPartitions::Heterogeneous,
                (true, None) => AcrossPartitions::Uniform(None),
                (true, Some(v)) => AcrossPartitions::Uniform(Some(v.try_into()?)),
            };
            constants.push(ConstExpr::new(expr(&c.expr)?, across));
        }
        let equal = node
            .equal
            .iter()
            .map(|class| parse_physical_exprs(&class.exprs, &decode, &schema, converter))
            .collect::<Result<Vec<_>>>()?;
        let reader = StageReaderExec::new(
            node.stage,
            layout,
            Arc::new(schema),
            node.partitions as usize,
            self.data.clone(),
        );
        let known = Known {
            ordering: LexOrdering::new(ordering),
            constants,
            equal,
        };
        let reader = match partitioning {
            Some(p) => reader.shaped(p, known)?,
            None => reader,
        };
        Ok(Arc::new(reader))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
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
            partitioning: Some(serialize_partitioning(&r.partitioning, self, converter)?),
            ordering: serialize_physical_sort_exprs(
                r.known.ordering.iter().flat_map(|o| o.iter().cloned()),
                self,
                converter,
            )?,
            constants: r
                .known
                .constants
                .iter()
                .map(|c| {
                    let (uniform, value) = match &c.across_partitions {
                        AcrossPartitions::Heterogeneous => (false, None),
                        AcrossPartitions::Uniform(None) => (true, None),
                        AcrossPartitions::Uniform(Some(v)) => (true, Some(v.try_into()?)),
                    };
                    Ok(ConstantNode {
                        expr: Some(serialize_physical_expr_with_converter(
                            &c.expr, self, converter,
                        )?),
                        uniform,
                        value,
                    })
                })
                .collect::<Result<_>>()?,
            equal: r
                .known
                .equal
                .iter()
                .map(|class| {
                    Ok(ExprsNode {
                        exprs: serialize_physical_exprs(class, self, converter)?,
                    })
                })
                .collect::<Result<_>>()?,
        };
        msg.encode(buf)
            .map_err(|e| DataFusionError::Internal(e.to_string()))
    }
}
