//! Distributed SQL for daskrs.
//!
//! The scheduler plans a query with DataFusion ([`planner`]), splits the
//! physical plan into stages at its exchanges ([`split`]) and submits one
//! `sql.stage` task per stage partition. A worker runs such a task with
//! [`stage::Executor`]: it reads the plan fragment, feeds the pieces of its
//! upstream stages into the fragment's [`reader::StageReaderExec`] leaves,
//! and returns its output whole or cut into pieces for the next shuffle.
//!
//! It must not depend on the scheduler, the worker or the network: it
//! plans and runs, and leaves moving bytes to them.

pub mod compare;
pub mod confine;
pub mod error;
pub mod footer;
pub mod ipc;
pub mod narrow;
pub mod planner;
pub mod reader;
pub mod rewrite;
pub mod s3;
pub mod session;
pub mod split;
pub mod stage;
pub mod tables;
pub mod tpcds;
pub mod tpch;
pub mod urls;
pub mod write;

pub use confine::LocalFiles;
pub use error::Error;
pub use planner::{Planned, Planner, Query};
pub use s3::{S3Access, S3Settings};
pub use stage::{Executor, KIND as STAGE_KIND, StageOutput};
pub use tables::InputTable;
