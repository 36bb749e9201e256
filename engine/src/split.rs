//! Splits a DataFusion physical plan into stages at its exchanges.
//!
//! A `RepartitionExec` becomes the root of the stage below it: each task of
//! that stage runs one partition of the repartition's input and cuts its
//! output into pieces. `CoalescePartitionsExec` and `SortPreservingMergeExec`
//! stay in the stage above; the stage below them ends with their input, one
//! whole output per task. In the stage above, a [`StageReaderExec`] stands
//! where the stage below was.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

use crate::reader::{Known, Layout, StageReaderExec};

/// What one task of a stage produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// One Arrow IPC stream.
    Whole,
    /// This many pieces, one per partition of the stage that reads them.
    Pieces(usize),
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub id: u32,
    /// The stage's plan; for [`Output::Pieces`] its root is the `RepartitionExec`.
    pub plan: Arc<dyn ExecutionPlan>,
    pub tasks: usize,
    pub output: Output,
    /// The plan's datafusion-proto encoding, which every task of the stage
    /// carries; `None` when it cannot be encoded (the planner says why).
    pub encoded: Option<Bytes>,
}

impl Stage {
    /// The node whose partition `task` each task runs.
    pub fn runs(&self) -> &Arc<dyn ExecutionPlan> {
        match self.output {
            Output::Pieces(_) => self.plan.children()[0],
            Output::Whole => &self.plan,
        }
    }

    /// The (upstream stage, reader partition) pairs task `task` reads.
    pub fn reads(&self, task: usize) -> Vec<(u32, Layout, u32)> {
        let mut out = Vec::new();
        needed(self.runs(), &BTreeSet::from([task]), &mut out);
        out.sort_unstable_by_key(|(s, _, q)| (*s, *q));
        out.dedup();
        out
    }
}

/// Stages in dependency order; the last one is the query's final stage.
pub fn split(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<Stage>> {
    let mut stages = Stages::default();
    let root = cut(plan, &mut stages)?;
    let tasks = root.output_partitioning().partition_count();
    let mut stages = stages.0;
    stages.push(Stage {
        id: stages.len() as u32,
        encoded: encode(&root).ok(),
        plan: root,
        tasks,
        output: Output::Whole,
    });
    Ok(stages)
}

/// A stage plan as the workers get it (datafusion-proto, stage readers by
/// the engine's codec).
pub fn encode(plan: &Arc<dyn ExecutionPlan>) -> Result<Bytes> {
    datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
        plan.clone(),
        &crate::reader::Codec::default(),
    )
}

/// The stages cut so far.
#[derive(Default)]
struct Stages(Vec<Stage>);

impl Stages {
    /// Adds a stage of `plan` unless one that computes the same already
    /// exists (the same tasks, output and encoded plan), as when a query
    /// names a common table expression twice: its readers then read that
    /// one's outputs. A plan whose every run may differ (one that calls
    /// `random()`) is never shared: its readers each get a run of their
    /// own. Returns the stage's id.
    fn add(&mut self, plan: Arc<dyn ExecutionPlan>, tasks: usize, output: Output) -> u32 {
        let encoded = encode(&plan).ok();
        if let Some(e) = &encoded
            && !is_volatile_plan(&plan)
            && let Some(same) = self
                .0
                .iter()
                .find(|s| s.tasks == tasks && s.output == output && s.encoded.as_ref() == Some(e))
        {
            return same.id;
        }
        let id = self.0.len() as u32;
        self.0.push(Stage {
            id,
            plan,
            tasks,
            output,
            encoded,
        });
        id
    }
}

/// Whether some expression of `plan` may give another value each run.
fn is_volatile_plan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut volatile = false;
    let _ = plan.apply(|node| {
        node.apply_expressions(&mut |e| {
            volatile |= is_volatile(e);
            Ok(if volatile {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    });
    volatile
}

fn cut(node: Arc<dyn ExecutionPlan>, stages: &mut Stages) -> Result<Arc<dyn ExecutionPlan>> {
    let children: Vec<Arc<dyn ExecutionPlan>> = node.children().into_iter().cloned().collect();
    let mut new_children = Vec::with_capacity(children.len());
    for c in &children {
        new_children.push(cut(c.clone(), stages)?);
    }
    let node = replace_children_if_necessary(node, new_children)?;

    if let Some(r) = node.downcast_ref::<RepartitionExec>() {
        let pieces = match r.partitioning() {
            Partitioning::Hash(_, n) | Partitioning::RoundRobinBatch(n) => *n,
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "distributed {other} repartitioning"
                )));
            }
        };
        let ordering = r
            .preserve_order()
            .then(|| r.input().output_ordering().cloned())
            .flatten();
        let id = stages.add(
            node.clone(),
            r.input().output_partitioning().partition_count(),
            Output::Pieces(pieces),
        );
        // Pieces from several tasks arrive one after another: hash
        // partitioned as the exchange cut them, but in no order.
        let reader: Arc<dyn ExecutionPlan> = Arc::new(
            StageReaderExec::new(
                id,
                Layout::Pieces,
                node.schema(),
                pieces,
                Default::default(),
            )
            .shaped(
                r.partitioning().clone(),
                Known::across_exchange(r.input().equivalence_properties(), false),
            )?,
        );
        // A shuffle that had to keep each partition sorted: pieces from
        // several tasks arrive one after another, so sort them again.
        return Ok(match ordering {
            Some(o) => Arc::new(SortExec::new(o, reader).with_preserve_partitioning(true)),
            None => reader,
        });
    }

    let merges = node.downcast_ref::<CoalescePartitionsExec>().is_some()
        || node.downcast_ref::<SortPreservingMergeExec>().is_some();
    if merges {
        let input = node.children()[0].clone();
        if input.downcast_ref::<StageReaderExec>().is_some() {
            return Ok(node);
        }
        let tasks = input.output_partitioning().partition_count();
        let id = stages.add(input.clone(), tasks, Output::Whole);
        // Each partition one task's whole output: laid out and sorted as
        // the stage's own partitions were.
        let reader = Arc::new(
            StageReaderExec::new(
                id,
                Layout::Direct,
                input.schema(),
                tasks,
                Default::default(),
            )
            .shaped(
                input.output_partitioning().clone(),
                Known::within_partitions(&input),
            )?,
        );
        return replace_children_if_necessary(node, vec![reader]);
    }
    Ok(node)
}

/// Collects the reader partitions that running `parts` of `node` reads.
fn needed(
    node: &Arc<dyn ExecutionPlan>,
    parts: &BTreeSet<usize>,
    out: &mut Vec<(u32, Layout, u32)>,
) {
    if let Some(r) = node.downcast_ref::<StageReaderExec>() {
        out.extend(
            parts
                .iter()
                .filter(|q| **q < r.partitions())
                .map(|q| (r.stage(), r.layout(), *q as u32)),
        );
        return;
    }
    let n = node.output_partitioning().partition_count();
    let is_union = node.downcast_ref::<UnionExec>().is_some();
    let is_subquery = node.downcast_ref::<ScalarSubqueryExec>().is_some();
    let mut offset = 0;
    for (i, child) in node.children().into_iter().enumerate() {
        let cn = child.output_partitioning().partition_count();
        let child_parts: BTreeSet<usize> = if is_union {
            // A union's partitions are its children's, one after another.
            let p = parts
                .iter()
                .filter(|p| **p >= offset && **p < offset + cn)
                .map(|p| p - offset)
                .collect();
            offset += cn;
            p
        } else if cn == n && !(is_subquery && i > 0) {
            parts.clone()
        } else {
            (0..cn).collect()
        };
        if !child_parts.is_empty() {
            needed(child, &child_parts, out);
        }
    }
}
