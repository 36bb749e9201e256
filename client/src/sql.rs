//! SQL through the cluster: the scheduler plans, the workers run the stages,
//! the client gathers the final stage's outputs.

use std::io::Cursor;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
pub use daskrs_proto::SqlTable;
use daskrs_proto::{SqlRequest, run_request, sql_response};

use crate::{Client, Error, Graph, Progress, Ran};

/// A query's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Stages of the distributed plan; 0 for statements the scheduler ran itself.
    pub stages: usize,
    pub tasks: usize,
    /// Where the time went: the tasks of each stage (`s0`, `s1`, ...)
    /// summed, most time first.
    pub stage_times: Vec<daskrs_proto::PrefixTotals>,
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
        self.plan_sql_with(sql, Vec::new(), false).await
    }

    /// As [`Client::plan_sql`], where `sql` may also name `tables`, results
    /// a session holds; with `one_output` the answer is one task's output.
    pub async fn plan_sql_with(
        &self,
        sql: &str,
        tables: Vec<SqlTable>,
        one_output: bool,
    ) -> Result<Plan, Error> {
        let mut grpc = self.grpc.clone();
        let r = grpc
            .sql(SqlRequest {
                sql: sql.to_string(),
                tables,
                one_output,
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
                    name: daskrs_core::graph::query_name(sql),
                    tasks: q
                        .tasks
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()
                        .map_err(|e: daskrs_proto::convert::DecodeError| {
                            Error::Status(tonic::Status::internal(e.to_string()))
                        })?,
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

    /// Runs `sql` on the cluster and gathers its answer. The scheduler plans
    /// and starts it in the same call.
    pub async fn sql(&self, sql: &str, progress: impl FnMut(Progress)) -> Result<Answer, Error> {
        let streams = self.sql_streams(sql, progress).await?;
        let mut schema = None;
        let mut batches = Vec::new();
        for (key, bytes) in &streams.streams {
            let (s, b) = read_ipc(key, bytes)?;
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
            stages: streams.stages,
            tasks: streams.tasks,
            stage_times: streams.stage_times,
        })
    }

    /// Runs `sql` on the cluster and gathers its answer as the Arrow IPC
    /// streams the final stage's tasks wrote, in order, undecoded.
    pub async fn sql_streams(
        &self,
        sql: &str,
        progress: impl FnMut(Progress),
    ) -> Result<Streams, Error> {
        let msg = run_request::Msg::Sql(daskrs_proto::SubmitSql {
            sql: sql.to_string(),
        });
        let finished = match self.start(msg, progress).await? {
            Ran::Local(bytes) => {
                return Ok(Streams {
                    streams: vec![("the scheduler's answer".to_string(), bytes)],
                    stages: 0,
                    tasks: 0,
                    stage_times: Vec::new(),
                });
            }
            Ran::Graph(finished) => finished,
        };
        let planned = finished.planned.clone().unwrap_or_default();
        let mut streams = Vec::with_capacity(planned.outputs.len());
        for key in &planned.outputs {
            let out = self.gather(&finished, key).await?;
            streams.push((key.clone(), out.bytes));
        }
        if streams.is_empty() {
            return Err(Error::Gather {
                key: String::new(),
                message: "the query has no output".into(),
            });
        }
        Ok(Streams {
            streams,
            stages: planned.stages as usize,
            tasks: finished.tasks as usize,
            stage_times: finished.prefixes,
        })
    }
}

/// A query's answer as it came: Arrow IPC streams, with the key of the task
/// that wrote each.
#[derive(Debug, Clone)]
pub struct Streams {
    pub streams: Vec<(String, Bytes)>,
    pub stages: usize,
    pub tasks: usize,
    pub stage_times: Vec<daskrs_proto::PrefixTotals>,
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
