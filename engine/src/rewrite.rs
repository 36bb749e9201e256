//! Plan changes that make a single-process plan safe to run as isolated tasks.
//!
//! A join that broadcasts its build side (`CollectLeft`) and must also emit
//! build-side rows at the end (left, full, left semi/anti/mark joins) counts
//! down the probe partitions of one process before it emits them. A task runs
//! one probe partition alone, so such a join would never emit those rows, or
//! emit them once per task. These joins become partitioned hash joins; when
//! they cannot (null-aware anti joins, nested-loop joins) their probe side is
//! merged into one partition.
//!
//! A semi or anti join needs of one side only whether a key is there: that
//! side's tasks send each distinct key once ([`distinct_keys`]).

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
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

/// For each semi or anti join, the side it reads only for its keys (the
/// build side of a right semi join: which item numbers were sold at all)
/// reaches the join as distinct keys, each task's duplicates dropped
/// before they are sent: the stage below a broadcast or a shuffle then
/// ships thousands of keys rather than millions of rows. Only a side whose
/// every column is a join key, joined without a filter, is changed; the
/// join's answer is the same, as a key found once is found.
pub fn distinct_keys(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(j) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        if j.filter().is_some() || j.null_aware {
            return Ok(Transformed::no(node));
        }
        let (left_keys, right_keys): (Vec<_>, Vec<_>) = j.on().iter().cloned().unzip();
        let (side, keys) = match j.join_type() {
            JoinType::RightSemi | JoinType::RightAnti => (0, left_keys),
            JoinType::LeftSemi | JoinType::LeftAnti => (1, right_keys),
            _ => return Ok(Transformed::no(node)),
        };
        let mut children: Vec<Arc<dyn ExecutionPlan>> =
            node.children().into_iter().cloned().collect();
        let Some(deduped) = dedup_exchange_input(&children[side], &keys)? else {
            return Ok(Transformed::no(node));
        };
        children[side] = deduped;
        Ok(Transformed::yes(replace_children_if_necessary(
            node.clone(),
            children,
        )?))
    })
    .map(|t| t.data)
}

/// `side` with distinct rows below its exchange (a merge or a shuffle),
/// when its columns are all join keys; `None` when it is not so shaped.
fn dedup_exchange_input(
    side: &Arc<dyn ExecutionPlan>,
    keys: &[Arc<dyn PhysicalExpr>],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let schema = side.schema();
    let mut is_key = vec![false; schema.fields().len()];
    for k in keys {
        match k.downcast_ref::<Column>() {
            Some(c) if c.index() < is_key.len() => is_key[c.index()] = true,
            _ => return Ok(None),
        }
    }
    if !is_key.iter().all(|k| *k) {
        return Ok(None);
    }
    let input = if side.downcast_ref::<CoalescePartitionsExec>().is_some()
        || side.downcast_ref::<RepartitionExec>().is_some_and(|r| {
            matches!(r.partitioning(), Partitioning::Hash(..)) && !r.preserve_order()
        }) {
        side.children()[0].clone()
    } else {
        return Ok(None);
    };
    if input.downcast_ref::<AggregateExec>().is_some() {
        // Already grouped (a distinct, or the keys of an aggregate).
        return Ok(None);
    }
    let group = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(f.name(), i));
            (column, f.name().clone())
        })
        .collect();
    let Ok(distinct) = AggregateExec::try_new(
        AggregateMode::Partial,
        PhysicalGroupBy::new_single(group),
        vec![],
        vec![],
        input.clone(),
        schema.clone(),
    ) else {
        return Ok(None);
    };
    // The join and the exchange were planned for these columns: they must
    // come out as they went in.
    if distinct.schema().fields() != schema.fields() {
        return Ok(None);
    }
    Ok(Some(replace_children_if_necessary(
        side.clone(),
        vec![Arc::new(distinct)],
    )?))
}
