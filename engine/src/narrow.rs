//! One partition of a stage's plan, as a plan of one partition.
//!
//! A stage task runs a single partition of its fragment. Operators that
//! share state between partitions of one process expect their siblings
//! to run too: a join's dynamic filter, built once the build side is in,
//! waits until every probe partition has reported. In a task the siblings
//! run elsewhere, or not at all, so the fragment is first narrowed to the
//! task's partition: its leaves yield just that partition, and every
//! operator above them has one partition. Then the filters a join or a
//! top-k learns while it runs can reach the scans below it, as they do in
//! one process.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};

/// `plan` reduced to its partition `partition`: a plan of one partition
/// whose partition 0 yields what `plan`'s partition `partition` yields,
/// running nothing of the other partitions. `None` when some operator
/// mixes partitions in a way this does not follow (an exchange inside the
/// fragment); the task then runs the fragment as it came.
pub fn narrow(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> Option<Arc<dyn ExecutionPlan>> {
    let n = plan.output_partitioning().partition_count();
    if partition >= n {
        return None;
    }
    if n == 1 {
        // Its one partition is all of it: whatever runs below, runs whole.
        return Some(plan.clone());
    }
    if plan.downcast_ref::<RepartitionExec>().is_some() {
        return None;
    }
    if let Some(union) = plan.downcast_ref::<UnionExec>() {
        // Partition p of a union is a partition of one of its inputs.
        let mut p = partition;
        for input in union.inputs() {
            let count = input.output_partitioning().partition_count();
            if p < count {
                let one = narrow(input, p)?;
                return Some(Arc::new(PickedExec::standing_for(plan, one, 0)));
            }
            p -= count;
        }
        return None;
    }
    let children = plan.children();
    if children.is_empty() {
        return Some(Arc::new(PickedExec::standing_for(
            plan,
            plan.clone(),
            partition,
        )));
    }
    // Every other operator's partition p is made of partition p of each
    // input of as many partitions, and all of an input of one partition
    // (a join's collected build side).
    let mut narrowed = Vec::with_capacity(children.len());
    for child in children {
        let count = child.output_partitioning().partition_count();
        if count == 1 {
            narrowed.push(child.clone());
        } else if count == n {
            narrowed.push(narrow(child, partition)?);
        } else {
            return None;
        }
    }
    replace_children_if_necessary(plan.clone(), narrowed).ok()
}

/// One partition of its input, standing for a plan of many: partition 0
/// is the input's partition `partition`, and it says of its rows what the
/// plan it stands for says of each of its partitions.
#[derive(Debug)]
pub struct PickedExec {
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    properties: Arc<PlanProperties>,
}

impl PickedExec {
    fn standing_for(
        plan: &Arc<dyn ExecutionPlan>,
        input: Arc<dyn ExecutionPlan>,
        partition: usize,
    ) -> PickedExec {
        let partitioning = match plan.output_partitioning() {
            Partitioning::Hash(on, _) => Partitioning::Hash(on.clone(), 1),
            _ => Partitioning::UnknownPartitioning(1),
        };
        let eq: EquivalenceProperties = plan.equivalence_properties().clone();
        PickedExec {
            input,
            partition,
            properties: Arc::new(PlanProperties::new(
                eq,
                partitioning,
                plan.pipeline_behavior(),
                plan.boundedness(),
            )),
        }
    }
}

impl DisplayAs for PickedExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PickedExec: partition={}", self.partition)
    }
}

impl ExecutionPlan for PickedExec {
    fn name(&self) -> &str {
        "PickedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn gather_filters_for_pushdown(
        &self,
        _: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _: &ConfigOptions,
    ) -> Result<FilterDescription> {
        // A partition of the input holds the same rows as it would under
        // the operator this stands for: whatever filters them there may
        // filter them at the input.
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return Err(DataFusionError::Internal("PickedExec has one child".into()));
        };
        Ok(Arc::new(PickedExec {
            input,
            partition: self.partition,
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "PickedExec has one partition, not {partition}"
            )));
        }
        self.input.execute(self.partition, ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use datafusion::common::NullEquality;
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::logical_expr::JoinType;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::reader::{Layout, StageReaderExec};

    fn schema(name: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]))
    }

    fn batch(schema: &SchemaRef, values: impl IntoIterator<Item = i64>) -> RecordBatch {
        let values: Int64Array = values.into_iter().collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap()
    }

    /// A plan of one partition per list of values.
    fn partitions(name: &str, parts: &[&[i64]]) -> Arc<dyn ExecutionPlan> {
        let s = schema(name);
        let batches: Vec<Vec<RecordBatch>> = parts
            .iter()
            .map(|p| vec![batch(&s, p.iter().copied())])
            .collect();
        MemorySourceConfig::try_new_exec(&batches, s, None).unwrap()
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        let mut v: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        v.sort();
        v
    }

    async fn run(plan: Arc<dyn ExecutionPlan>, partition: usize) -> Vec<i64> {
        let ctx = SessionContext::new().task_ctx();
        let stream = plan.execute(partition, ctx).unwrap();
        values(
            &datafusion::physical_plan::common::collect(stream)
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn each_partition_of_a_union_narrows_to_the_input_it_comes_from() {
        let union: Arc<dyn ExecutionPlan> = UnionExec::try_new(vec![
            partitions("x", &[&[1, 2], &[3]]),
            partitions("x", &[&[10], &[20, 21], &[30]]),
        ])
        .unwrap();
        assert_eq!(union.output_partitioning().partition_count(), 5);
        for p in 0..5 {
            let one = narrow(&union, p).expect("a union narrows");
            assert_eq!(one.output_partitioning().partition_count(), 1);
            assert_eq!(
                run(one, 0).await,
                run(union.clone(), p).await,
                "partition {p}"
            );
        }
        assert!(narrow(&union, 5).is_none(), "no partition 5");
    }

    #[test]
    fn an_exchange_inside_the_plan_is_not_narrowed() {
        let input = partitions("x", &[&[1], &[2]]);
        let shuffle: Arc<dyn ExecutionPlan> = Arc::new(
            RepartitionExec::try_new(
                input.clone(),
                Partitioning::Hash(vec![Arc::new(Column::new("x", 0))], 2),
            )
            .unwrap(),
        );
        assert!(narrow(&shuffle, 0).is_none());
        // Above an operator of one partition, whatever is below runs whole.
        let merged: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(shuffle));
        assert!(Arc::ptr_eq(&narrow(&merged, 0).unwrap(), &merged));
    }

    #[tokio::test]
    async fn a_join_in_one_partition_filters_the_stage_it_probes_by_its_build_side() {
        // The probe side is a stage's shuffled output of two partitions,
        // as a task gets it; the build side a few keys, collected whole.
        let probe = schema("k");
        let mut data = HashMap::new();
        for p in 0..2u32 {
            let rows = batch(&probe, (0..1000).map(|i| i64::from(p) * 1000 + i));
            let bytes = crate::stage::ipc_bytes(probe.clone(), &[rows]).unwrap();
            data.insert((7, p), vec![bytes]);
        }
        let reader: Arc<dyn ExecutionPlan> = Arc::new(StageReaderExec::new(
            7,
            Layout::Pieces,
            probe,
            2,
            Arc::new(data),
        ));
        let build: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(partitions(
            "b",
            &[&[5, 1500], &[1999, 4000]],
        )));
        let join: Arc<dyn ExecutionPlan> = Arc::new(
            HashJoinExec::try_new(
                build,
                reader,
                vec![(
                    Arc::new(Column::new("b", 0)) as _,
                    Arc::new(Column::new("k", 0)) as _,
                )],
                None,
                &JoinType::Inner,
                Some(vec![1]),
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )
            .unwrap(),
        );
        let ctx = SessionContext::new();
        crate::session::filter_while_running(ctx.state_ref().write().config_mut().options_mut());
        let options = ctx.state().config().options().clone();
        for (p, want) in [(0, vec![5]), (1, vec![1500, 1999])] {
            let one = narrow(&join, p).expect("a join narrows");
            let one = FilterPushdown::new_post_optimization()
                .optimize(one, &options)
                .unwrap();
            let shown = displayable(one.as_ref()).indent(true).to_string();
            assert!(shown.contains("filters=[DynamicFilter"), "{shown}");
            assert_eq!(
                values(&collect(one.clone(), ctx.task_ctx()).await.unwrap()),
                want
            );
            // The reader let through only rows within the build side's keys.
            let mut read = None;
            one.apply(|node| {
                if node.downcast_ref::<StageReaderExec>().is_some() {
                    read = node.metrics();
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            let read = read.expect("the reader has metrics");
            let count = |name: &str| {
                read.sum_by_name(name)
                    .map(|v| v.as_usize())
                    .unwrap_or_default()
            };
            assert_eq!(count("rows_read"), 1000, "partition {p}");
            assert!(count("rows_filtered") >= 997, "partition {p}: {read:?}");
        }
    }
}
