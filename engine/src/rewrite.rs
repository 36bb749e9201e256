//! Plan changes that make a single-process plan safe to run as isolated tasks.
//!
//! A join that broadcasts its build side (`CollectLeft`) and must also emit
//! build-side rows at the end (left, full, left semi/anti/mark joins) counts
//! down the probe partitions of one process before it emits them. A task runs
//! one probe partition alone, so such a join would never emit those rows, or
//! emit them once per task. These joins become partitioned hash joins; when
//! they cannot (null-aware anti joins, nested-loop joins) their probe side is
//! merged into one partition.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

fn emits_build_rows_at_end(t: &JoinType) -> bool {
    matches!(
        t,
        JoinType::Left
            | JoinType::LeftAnti
            | JoinType::LeftSemi
            | JoinType::LeftMark
            | JoinType::Full
    )
}

fn partitions(p: &Arc<dyn ExecutionPlan>) -> usize {
    p.output_partitioning().partition_count()
}

pub fn for_tasks(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if let Some(j) = node.downcast_ref::<HashJoinExec>()
            && *j.partition_mode() == PartitionMode::CollectLeft
            && emits_build_rows_at_end(j.join_type())
            && partitions(j.right()) > 1
        {
            let right = j.right().clone();
            if j.null_aware {
                let merged: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(right));
                let left = j.left().clone();
                return Ok(Transformed::yes(replace_children_if_necessary(
                    node.clone(),
                    vec![left, merged],
                )?));
            }
            let n = partitions(&right);
            let left = match j.left().downcast_ref::<CoalescePartitionsExec>() {
                Some(c) => c.input().clone(),
                None => j.left().clone(),
            };
            let (left_keys, right_keys): (Vec<_>, Vec<_>) = j.on().iter().cloned().unzip();
            let left = Arc::new(RepartitionExec::try_new(
                left,
                Partitioning::Hash(left_keys, n),
            )?);
            let right = Arc::new(RepartitionExec::try_new(
                right,
                Partitioning::Hash(right_keys, n),
            )?);
            let join = j
                .builder()
                .with_partition_mode(PartitionMode::Partitioned)
                .with_new_children(vec![left, right])?
                .recompute_properties()
                .build_exec()?;
            return Ok(Transformed::yes(join));
        }
        if let Some(j) = node.downcast_ref::<NestedLoopJoinExec>()
            && emits_build_rows_at_end(j.join_type())
            && partitions(j.right()) > 1
        {
            let merged: Arc<dyn ExecutionPlan> =
                Arc::new(CoalescePartitionsExec::new(j.right().clone()));
            let left = j.left().clone();
            return Ok(Transformed::yes(replace_children_if_necessary(
                node.clone(),
                vec![left, merged],
            )?));
        }
        Ok(Transformed::no(node))
    })
    .map(|t| t.data)
}
