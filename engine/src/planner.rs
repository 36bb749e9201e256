//! SQL text to a task graph, in the scheduler.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use daskrs_core::TaskSpec;
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, displayable,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use prost::Message;

use crate::Error;
use crate::reader::Layout;
use crate::s3::S3Access;
use crate::session::{Tuning, context};
use crate::split::{Output, Stage, split};
use crate::stage::{KIND, Slot, StageTask};
use crate::tables::{InputTable, table_index};

/// What a SQL request turned into.
#[derive(Debug)]
pub enum Planned {
    /// Statements the scheduler ran itself (`CREATE EXTERNAL TABLE`,
    /// `SHOW TABLES`, `DESCRIBE`, `EXPLAIN`, ...), with their result as an
    /// Arrow IPC stream.
    Local(Bytes),
    /// A query to run on the workers.
    Query(Query),
}

/// A query as a task graph.
#[derive(Debug)]
pub struct Query {
    pub tasks: Vec<TaskSpec>,
    /// The final stage's tasks, in partition order; their outputs concatenated are the answer.
    pub outputs: Vec<String>,
    /// The distributed plan: stages, tasks per stage and their shuffles.
    pub explain: String,
    pub stages: usize,
    /// Why the plan runs whole, as one task, when it could not be cut
    /// into stages.
    pub whole: Option<String>,
}

/// Plans SQL against the cluster's catalog. Tables created with
/// `CREATE EXTERNAL TABLE` stay for later requests, from any client.
pub struct Planner {
    ctx: SessionContext,
}

impl Planner {
    pub fn new(s3: Option<S3Access>) -> Planner {
        Planner {
            ctx: context(s3, Tuning::default()),
        }
    }

    /// Plans `sql` (one or more statements; only the last may be a query)
    /// for a cluster whose workers have `threads` threads in all.
    pub async fn plan(&self, sql: &str, threads: usize) -> Result<Planned, Error> {
        self.plan_with(sql, threads, &[], false).await
    }

    /// As [`Planner::plan`], where the statements may also name `tables`
    /// (results a session holds); with `one_output` the answer is merged into
    /// one task's output.
    pub async fn plan_with(
        &self,
        sql: &str,
        threads: usize,
        tables: &[InputTable],
        one_output: bool,
    ) -> Result<Planned, Error> {
        let describe = |e: DataFusionError| Error::from_datafusion(&e);
        let statements = DFParser::parse_sql(sql).map_err(describe)?;
        if statements.is_empty() {
            return Err(Error::BadSql("no SQL statement given".into()));
        }
        let mut state = self.ctx.state();
        crate::session::set_tasks(state.config_mut().options_mut(), threads);
        if !tables.is_empty() {
            let (catalog, schema) = {
                let o = &state.config().options().catalog;
                (o.default_catalog.clone(), o.default_schema.clone())
            };
            let catalogs =
                crate::tables::overlay(state.catalog_list().clone(), &catalog, &schema, tables);
            state = SessionStateBuilder::new_from_existing(state)
                .with_catalog_list(catalogs)
                .build();
        }
        let session = SessionContext::new_with_state(state.clone());
        let n = statements.len();
        let mut last_local = Vec::new();
        for (i, statement) in statements.into_iter().enumerate() {
            if is_explain_analyze(&statement) {
                return Err(Error::BadSql(
                    "EXPLAIN ANALYZE is not supported; use --explain to see the distributed plan"
                        .into(),
                ));
            }
            let plan = state.statement_to_plan(statement).await.map_err(describe)?;
            // DataFusion reads globs only in the last part of local paths:
            // other glob tables are made here.
            if let LogicalPlan::Ddl(datafusion::logical_expr::DdlStatement::CreateExternalTable(c)) =
                &plan
                && let [location] = c.locations.as_slice()
                && crate::urls::is_glob(location)
            {
                let exists = session.table_exist(c.name.clone()).unwrap_or(false);
                if exists && !c.if_not_exists && !c.or_replace {
                    return Err(Error::BadSql(format!("table '{}' already exists", c.name)));
                }
                let urls = if exists && c.if_not_exists {
                    Some(Vec::new())
                } else {
                    crate::urls::glob_urls(&session.state(), location)
                        .await
                        .map_err(describe)?
                };
                // None: a glob DataFusion reads itself, planned below.
                if let Some(urls) = urls {
                    if !urls.is_empty() {
                        let table = crate::urls::external_table(&session.state(), c, urls)
                            .await
                            .map_err(describe)?;
                        if exists {
                            session.deregister_table(c.name.clone()).map_err(describe)?;
                        }
                        session
                            .register_table(c.name.clone(), table)
                            .map_err(describe)?;
                    }
                    state = session.state();
                    last_local = Vec::new();
                    continue;
                }
            }
            if runs_locally(&plan) {
                let batches = session
                    .execute_logical_plan(plan)
                    .await
                    .map_err(describe)?
                    .collect()
                    .await
                    .map_err(describe)?;
                last_local = batches;
                // DDL changes the catalog the next statement plans against.
                state = session.state();
                continue;
            }
            if i + 1 != n {
                return Err(Error::BadSql(format!(
                    "statement {} of {n} is a query; only the last statement may be one",
                    i + 1
                )));
            }
            if let LogicalPlan::Copy(copy) = &plan {
                if !copy.partition_by.is_empty() {
                    return Err(Error::BadSql("COPY ... PARTITIONED BY is not supported; write one file per partition to a directory instead".into()));
                }
                let format = copy.file_type.get_ext().to_ascii_lowercase();
                if !matches!(format.as_str(), "parquet" | "csv" | "json") {
                    return Err(Error::BadSql(format!(
                        "COPY writes PARQUET, CSV or JSON, not {format}"
                    )));
                }
                let physical = state
                    .create_physical_plan(&copy.input)
                    .await
                    .map_err(describe)?;
                let directory = copy.output_url.ends_with('/')
                    || !copy
                        .output_url
                        .to_ascii_lowercase()
                        .ends_with(&format!(".{}", crate::write::extension(&format)));
                let target = crate::write::WriteTarget {
                    url: copy.output_url.clone(),
                    format,
                    query: query_id(),
                    directory,
                };
                return distribute_with(physical, Some(target), tables).map(Planned::Query);
            }
            if matches!(plan, LogicalPlan::Dml(_)) {
                return Err(Error::BadSql(
                    "INSERT, UPDATE and DELETE are not supported; use COPY (query) TO".into(),
                ));
            }
            let mut physical = state.create_physical_plan(&plan).await.map_err(describe)?;
            if one_output && physical.output_partitioning().partition_count() > 1 {
                physical = Arc::new(CoalescePartitionsExec::new(physical));
            }
            return distribute_with(physical, None, tables).map(Planned::Query);
        }
        ipc(&last_local).map(Planned::Local)
    }
}

fn is_explain_analyze(s: &Statement) -> bool {
    match s {
        Statement::Explain(e) => e.options.analyze,
        _ => false,
    }
}

/// Statements that touch only the catalog, or describe a plan.
fn runs_locally(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::DescribeTable(_)
            | LogicalPlan::Explain(_)
    ) || is_catalog_query(plan)
}

/// Queries of `information_schema` (`SHOW TABLES`, `SHOW COLUMNS`) read the
/// scheduler's own catalog.
fn is_catalog_query(plan: &LogicalPlan) -> bool {
    let mut only_catalog = true;
    let mut any_scan = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            any_scan = true;
            if scan.table_name.schema() != Some("information_schema") {
                only_catalog = false;
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    any_scan && only_catalog
}

fn ipc(batches: &[RecordBatch]) -> Result<Bytes, Error> {
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => Arc::new(arrow::datatypes::Schema::empty()),
    };
    Ok(crate::stage::ipc_bytes(schema, batches)?)
}

fn key(stage: u32, task: usize) -> String {
    format!("s{stage}.{task}")
}

fn query_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// One task per partition of every stage.
pub fn distribute(physical: Arc<dyn ExecutionPlan>) -> Result<Query, Error> {
    distribute_with(physical, None, &[])
}

/// As [`distribute`]; with a target, the final stage writes files and one
/// more task commits them. `tables` are the input tables the plan scans.
pub fn distribute_with(
    physical: Arc<dyn ExecutionPlan>,
    write: Option<crate::write::WriteTarget>,
    tables: &[InputTable],
) -> Result<Query, Error> {
    distribute_cut(physical, write, tables, |p| {
        split(crate::rewrite::distinct_keys(crate::rewrite::for_tasks(
            p,
        )?)?)
    })
}

/// [`distribute_with`], the plan cut into stages by `cut`. A plan `cut`
/// cannot cut runs whole, as one task, and the explanation says why: the
/// answer stays right, only slower.
fn distribute_cut(
    physical: Arc<dyn ExecutionPlan>,
    write: Option<crate::write::WriteTarget>,
    tables: &[InputTable],
    cut: impl FnOnce(Arc<dyn ExecutionPlan>) -> datafusion::error::Result<Vec<Stage>>,
) -> Result<Query, Error> {
    let (stages, whole) = match cut(physical.clone()) {
        Ok(stages) => (stages, None),
        Err(e) => {
            // DataFusion's internal errors go on to ask for a bug report.
            let why = crate::error::describe(&e);
            let why = why.lines().next().unwrap_or_default().to_string();
            tracing::warn!(error = %why, "the plan cannot be cut into stages; it runs as one task");
            (vec![one_task(physical)], Some(why))
        }
    };
    let mut tasks = Vec::new();
    // What each stage reads, for the explanation: (upstream stage, layout).
    let mut inputs: Vec<Vec<(u32, Layout)>> = vec![Vec::new(); stages.len()];
    for stage in &stages {
        // Encoded once, when the plan was cut; again only for the error.
        let plan = match &stage.encoded {
            Some(plan) => plan.clone(),
            None => crate::split::encode(&stage.plan).map_err(|e| {
                Error::from_datafusion(&e)
                    .context(format!("stage {} cannot be sent to workers", stage.id))
            })?,
        };
        let pieces = match stage.output {
            Output::Whole => 0,
            Output::Pieces(n) => n as u32,
        };
        let is_final = stage.id as usize + 1 == stages.len();
        if is_final
            && let Some(w) = &write
            && !w.directory
            && stage.tasks != 1
        {
            return Err(Error::BadSql(format!(
                "the query has {} partitions; COPY it to a directory (a URL ending in /), one file per partition",
                stage.tasks
            )));
        }
        for j in 0..stage.tasks {
            let mut deps = Vec::new();
            let mut parts = Vec::new();
            let mut slots = Vec::new();
            for (upstream, layout, q) in stage.reads(j) {
                let read = &mut inputs[stage.id as usize];
                if !read.contains(&(upstream, layout)) {
                    read.push((upstream, layout));
                }
                let slot = Slot {
                    stage: upstream,
                    partition: q,
                };
                if let Some(t) = table_index(upstream) {
                    let table = tables.get(t).ok_or_else(|| {
                        Error::BadSql(format!(
                            "the plan reads input table {t}, which was not given"
                        ))
                    })?;
                    deps.push(table.key.clone());
                    parts.push(None);
                    slots.push(slot);
                    continue;
                }
                match layout {
                    Layout::Pieces => {
                        for k in 0..stages[upstream as usize].tasks {
                            deps.push(key(upstream, k));
                            parts.push(Some(q));
                            slots.push(slot.clone());
                        }
                    }
                    Layout::Direct => {
                        deps.push(key(upstream, q as usize));
                        parts.push(None);
                        slots.push(slot);
                    }
                }
            }
            let payload = StageTask {
                plan: plan.clone(),
                stage: stage.id,
                partition: j as u32,
                pieces,
                slots,
                write: if is_final { write.clone() } else { None },
                commit: false,
            }
            .encode_to_vec();
            tasks.push(
                TaskSpec::new(key(stage.id, j), KIND)
                    .payload(payload)
                    .deps(deps)
                    .parts(parts),
            );
        }
    }
    let last = stages.last().expect("split always makes a final stage");
    let mut outputs: Vec<String> = (0..last.tasks).map(|j| key(last.id, j)).collect();
    if write.is_some() {
        let payload = StageTask {
            stage: last.id,
            slots: (0..last.tasks)
                .map(|j| Slot {
                    stage: last.id,
                    partition: j as u32,
                })
                .collect(),
            commit: true,
            ..Default::default()
        }
        .encode_to_vec();
        tasks.push(
            TaskSpec::new("commit", KIND)
                .payload(payload)
                .deps(outputs.clone()),
        );
        outputs = vec!["commit".to_string()];
    }
    let mut explained = String::new();
    if let Some(why) = &whole {
        let _ = writeln!(
            explained,
            "The plan could not be cut into stages ({why}): it runs whole, as one task."
        );
    }
    explained += &explain(&stages, &inputs, tables);
    Ok(Query {
        outputs,
        explain: explained,
        stages: stages.len(),
        tasks,
        whole,
    })
}

/// The whole plan as the one stage of one task.
fn one_task(physical: Arc<dyn ExecutionPlan>) -> Stage {
    let plan: Arc<dyn ExecutionPlan> = if physical.output_partitioning().partition_count() > 1 {
        Arc::new(CoalescePartitionsExec::new(physical))
    } else {
        physical
    };
    Stage {
        id: 0,
        plan,
        tasks: 1,
        output: Output::Whole,
        encoded: None,
    }
}

/// The distributed plan as text: each stage, its tasks, what it reads and
/// how its output is cut, then its operators.
/// `inputs[s]` lists what stage `s` reads.
pub fn explain(stages: &[Stage], inputs: &[Vec<(u32, Layout)>], tables: &[InputTable]) -> String {
    let mut s = String::new();
    for stage in stages {
        let output = match (
            &stage.output,
            stage
                .plan
                .downcast_ref::<datafusion::physical_plan::repartition::RepartitionExec>(),
        ) {
            (Output::Pieces(n), Some(r)) => match r.partitioning() {
                Partitioning::Hash(exprs, _) => {
                    let on: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                    format!("shuffled into {n} pieces by hash of [{}]", on.join(", "))
                }
                _ => format!("shuffled into {n} pieces round-robin"),
            },
            (Output::Pieces(n), None) => format!("shuffled into {n} pieces"),
            (Output::Whole, _) if stage.id as usize + 1 == stages.len() => {
                "returned to the client".to_string()
            }
            (Output::Whole, _) => "kept whole".to_string(),
        };
        let reads: Vec<String> = inputs[stage.id as usize]
            .iter()
            .map(
                |(upstream, layout)| match (table_index(*upstream), layout) {
                    (Some(t), _) => match tables.get(t) {
                        Some(t) => format!("table {} (key {})", t.name, t.key),
                        None => format!("input table {t}"),
                    },
                    (None, Layout::Pieces) => format!("stage {upstream} (shuffle)"),
                    (None, Layout::Direct) => format!("stage {upstream} (whole)"),
                },
            )
            .collect();
        let reads = if reads.is_empty() {
            "files".to_string()
        } else {
            reads.join(", ")
        };
        let _ = writeln!(
            s,
            "Stage {}: {} task{}, reads {reads}, output {output}",
            stage.id,
            stage.tasks,
            if stage.tasks == 1 { "" } else { "s" }
        );
        let body = displayable(stage.runs().as_ref()).indent(false).to_string();
        for line in body.lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::StageOutput;
    use crate::{Executor, compare, tpch};

    #[tokio::test(flavor = "multi_thread")]
    async fn a_plan_that_cannot_be_cut_runs_whole_as_one_task() {
        let dir = tempfile::tempdir().unwrap();
        tpch::generate(dir.path(), 0.01, 2).unwrap();
        let ctx = compare::single_node_context(None);
        compare::run_sql(
            &ctx,
            &tpch::create_tables(&dir.path().display().to_string()),
        )
        .await
        .unwrap();
        let sql = "select l_returnflag, count(*), sum(l_quantity) from lineitem group by 1";
        let physical = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        assert!(physical.output_partitioning().partition_count() > 1);
        let query = distribute_cut(physical, None, &[], |_| {
            Err(DataFusionError::Internal("this plan has no cut".into()))
        })
        .unwrap();
        assert_eq!((query.stages, query.tasks.len()), (1, 1));
        assert_eq!(
            query.whole.as_deref(),
            Some("Internal error: this plan has no cut.")
        );
        assert!(
            query.explain.starts_with(
                "The plan could not be cut into stages (Internal error: this plan has no cut.)"
            ),
            "{}",
            query.explain
        );
        let task = &query.tasks[0];
        assert!(task.deps.is_empty());
        let payload = task.payload.clone();
        let out =
            tokio::task::spawn_blocking(move || Executor::new(None).run(&payload, Vec::new()))
                .await
                .unwrap()
                .unwrap();
        let StageOutput::Whole(bytes) = out else {
            panic!("one task's answer comes whole")
        };
        let got: Vec<RecordBatch> =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
        let want = compare::run_sql(&ctx, sql).await.unwrap();
        assert_eq!(
            compare::sorted_rows(&got).unwrap(),
            compare::sorted_rows(&want).unwrap()
        );
    }
}
