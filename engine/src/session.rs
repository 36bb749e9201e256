//! The DataFusion sessions of the scheduler (planning) and the workers
//! (running stage tasks), set up the same way.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::s3::{Registry, S3Access};

/// Settings that shape a plan.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How many tasks a stage over files or a shuffle gets: the cluster's
    /// worker threads, so every thread has work.
    pub partitions: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { partitions: 2 }
    }
}

/// The session configuration for distributed plans.
pub fn config(t: &Tuning) -> SessionConfig {
    let mut c = SessionConfig::new()
        .with_target_partitions(t.partitions.max(1))
        .with_information_schema(true)
        // A round-robin shuffle after a scan would move whole tables between
        // workers; files are split by row-group ranges across tasks instead.
        .with_round_robin_repartition(false)
        .with_repartition_file_min_size(1024 * 1024);
    let o = c.options_mut();
    // Each task runs one partition alone: it must read its own file group,
    // not take over its siblings' files as an idle partition would in one process.
    o.execution.enable_file_stream_work_stealing = false;
    // Dynamic filters tie a scan to a join or top-k in the same process; a
    // stage runs apart from the operators that would feed them.
    o.optimizer.enable_dynamic_filter_pushdown = false;
    o.optimizer.enable_join_dynamic_filter_pushdown = false;
    o.optimizer.enable_topk_dynamic_filter_pushdown = false;
    o.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    // An uncorrelated scalar subquery becomes a join: as a physical node it
    // would share its result with expressions that may land in other stages.
    o.optimizer.enable_physical_uncorrelated_scalar_subquery = false;
    set_tasks(o, t.partitions);
    c
}

/// Lets the joins and top-ks of a plan a worker runs filter the scans
/// below them by what they have seen (dynamic filters), as in one
/// process: a plan is cut into stages without them, and each task adds
/// them to its own part once it holds only its partition
/// ([`crate::narrow`]).
pub fn filter_while_running(o: &mut datafusion::config::ConfigOptions) {
    o.optimizer.enable_join_dynamic_filter_pushdown = true;
    o.optimizer.enable_topk_dynamic_filter_pushdown = true;
}

/// Most bytes (and, when the size is unknown, rows) that the build sides of
/// one broadcast join send to all of a stage's tasks together.
const BROADCAST_BYTES: usize = 256 << 20;
const BROADCAST_ROWS: usize = 8 << 20;

/// Sets how many tasks a stage gets, and with it which joins broadcast their
/// build side instead of shuffling both sides.
///
/// In one process a partitioned join moves its inputs between threads
/// almost for free, so DataFusion broadcasts only build sides under 1 MB or
/// 128K rows. Between workers every shuffled row is written, sent and read
/// again, while a broadcast build side is sent once to each task: a join of
/// a few hundred thousand rows with lineitem then ships the small side twice
/// rather than all of lineitem once. The limit shrinks as the tasks grow.
pub fn set_tasks(o: &mut datafusion::config::ConfigOptions, tasks: usize) {
    let tasks = tasks.max(1);
    o.execution.target_partitions = tasks;
    let defaults = datafusion::config::OptimizerOptions::default();
    o.optimizer.hash_join_single_partition_threshold =
        (BROADCAST_BYTES / tasks).max(defaults.hash_join_single_partition_threshold);
    o.optimizer.hash_join_single_partition_threshold_rows =
        (BROADCAST_ROWS / tasks).max(defaults.hash_join_single_partition_threshold_rows);
}

/// A session whose object stores are local files and, when configured, S3.
pub fn context(s3: Option<S3Access>, t: Tuning) -> SessionContext {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Registry::new(s3)))
        .build_arc()
        .expect("a runtime with default limits always builds");
    with_url_tables(SessionContext::new_with_config_rt(config(&t), runtime))
}

/// Lets `FROM` name files, directories and globs, local or in S3.
pub fn with_url_tables(ctx: SessionContext) -> SessionContext {
    let factory = Arc::new(crate::urls::UrlTables::default());
    let catalogs = Arc::new(datafusion::catalog::DynamicFileCatalog::new(
        ctx.state().catalog_list().clone(),
        factory.clone(),
    ));
    let ctx: SessionContext = ctx
        .into_state_builder()
        .with_catalog_list(catalogs)
        .build()
        .into();
    let weak = ctx.state_weak_ref();
    factory.set_state(Box::new(move || weak.upgrade().map(|s| s.read().clone())));
    ctx
}
