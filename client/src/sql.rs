//! SQL through the cluster: the scheduler plans, the workers run the stages,
//! the client gathers the final stage's outputs.

use std::io::Cursor;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use daskrs_proto::{SqlRequest, sql_response};

use crate::{Client, Error, Graph, Progress};

/// A query's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Stages of the distributed plan; 0 for statements the scheduler ran itself.
    pub stages: usize,
    pub tasks: usize,
}

impl Answer {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What the scheduler made of some SQL.
pub enum Plan {
    Local(Bytes),
    Query {
        graph: Graph,
        explain: String,
        stages: usize,
    },
}

impl Client {
    /// Asks the scheduler to plan `sql`.
    pub async fn plan_sql(&self, sql: &str) -> Result<Plan, Error> {
        let mut grpc = self.grpc.clone();
        let r = grpc
            .sql(SqlRequest {
                sql: sql.to_string(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => Error::Rejected(s.message().to_string()),
                _ => Error::Status(s),
            })?
            .into_inner();
        match r.result {
            Some(sql_response::Result::Local(b)) => Ok(Plan::Local(Bytes::from(b))),
            Some(sql_response::Result::Query(q)) => Ok(Plan::Query {
                graph: Graph {
                    name: first_line(sql),
                    tasks: q.tasks.into_iter().map(Into::into).collect(),
                    outputs: q.outputs,
                },
                explain: q.explain,
                stages: q.stages as usize,
            }),
            None => Err(Error::Status(tonic::Status::internal(
                "the scheduler sent an empty answer",
            ))),
        }
    }

    /// Runs `sql` on the cluster and gathers its answer.
    pub async fn sql(&self, sql: &str, progress: impl FnMut(Progress)) -> Result<Answer, Error> {
        match self.plan_sql(sql).await? {
            Plan::Local(bytes) => {
                let (schema, batches) = read_ipc("the scheduler's answer", &bytes)?;
                Ok(Answer {
                    schema,
                    batches,
                    stages: 0,
                    tasks: 0,
                })
            }
            Plan::Query { graph, stages, .. } => {
                let tasks = graph.tasks.len();
                let keys = graph.outputs.clone();
                let finished = self.run(graph, progress).await?;
                let mut schema = None;
                let mut batches = Vec::new();
                for key in &keys {
                    let out = self.gather(&finished, key).await?;
                    let (s, b) = read_ipc(key, &out.bytes)?;
                    schema.get_or_insert(s);
                    batches.extend(b);
                }
                let schema = schema.ok_or_else(|| Error::Gather {
                    key: String::new(),
                    message: "the query has no output".into(),
                })?;
                Ok(Answer {
                    schema,
                    batches,
                    stages,
                    tasks,
                })
            }
        }
    }
}

fn read_ipc(what: &str, bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), Error> {
    let bad = |e: arrow::error::ArrowError| Error::Gather {
        key: what.to_string(),
        message: format!("corrupt Arrow IPC stream: {e}"),
    };
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(bad)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    Ok((schema, batches))
}

fn first_line(sql: &str) -> String {
    let line = sql
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("sql");
    line.chars().take(80).collect()
}
