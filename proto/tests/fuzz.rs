//! Fuzz targets of every message the gRPC services decode, with the
//! conversions into core types that follow, and of the chunk streams
//! results arrive in: no input may panic. `cargo test` runs a bounded
//! number of inputs each (see `daskrs_core::fuzz`), bent from valid
//! messages; `cargo bolero test <target> -p daskrs-proto` runs one for as
//! long as asked, guided by coverage. What the scheduler does with a
//! decoded message is fuzzed in its own crate.

use bytes::Bytes;
use daskrs_core::{Assignment, TaskSpec as CoreTaskSpec, fuzz};
use daskrs_proto::convert::data_format;
use daskrs_proto::*;
use prost::Message;

/// The bounded fuzz loop over `examples` (messages), decoding each input
/// as `$m` and handing it to `$visit`. (A macro, so that each target's
/// `check!` is its own, with its own corpus under `cargo bolero`.)
macro_rules! decode_each {
    ([$($example:expr),+], |$m:ident: $ty:ty| $visit:block) => {{
        let examples: Vec<Vec<u8>> = vec![$(($example).encode_to_vec()),+];
        let examples: Vec<&[u8]> = examples.iter().map(Vec::as_slice).collect();
        bolero::check!()
            .with_type::<fuzz::Input>()
            .with_iterations(fuzz::inputs(20_000))
            .for_each(|input| {
                if let Ok($m) = <$ty>::decode(&fuzz::bytes(&examples, input)[..]) {
                    $visit
                }
            });
    }};
}

fn task(key: &str, deps: &[&str], parts: Vec<i64>) -> TaskSpec {
    TaskSpec {
        key: key.into(),
        kind: "add".into(),
        payload: Bytes::from_static(b"{\"n\": 3}"),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        priority: -2,
        retries: 1,
        parts,
    }
}

fn tasks(ts: Vec<TaskSpec>) {
    for t in ts {
        let _ = CoreTaskSpec::try_from(t);
    }
}

fn chunk(data: &'static [u8], format: DataFormat, total: u64) -> DataChunk {
    DataChunk {
        format: format as i32,
        total_bytes: total,
        data: Bytes::from_static(data),
    }
}

// ------------------------------------------------------------ Scheduler

#[test]
fn run_request() {
    let submit = RunRequest {
        msg: Some(run_request::Msg::Submit(SubmitGraph {
            tasks: vec![task("a", &[], vec![]), task("b", &["a", "a"], vec![0, -1])],
            outputs: vec!["b".into()],
            name: "g".into(),
            explain: "Stage 0: 2 tasks, reads files, output returned to the client".into(),
        })),
    };
    let sql = RunRequest {
        msg: Some(run_request::Msg::Sql(SubmitSql {
            sql: "SELECT 1".into(),
        })),
    };
    let release = RunRequest {
        msg: Some(run_request::Msg::Release(ReleaseKeys {
            keys: vec!["x".into(), "y".into()],
        })),
    };
    decode_each!([&submit, &sql, &release], |m: RunRequest| {
        if let Some(run_request::Msg::Submit(s)) = m.msg {
            tasks(s.tasks);
        }
    });
}

#[test]
fn gather_request() {
    let m = GatherRequest {
        graph_id: 7,
        key: "('sum-1', 0)".into(),
    };
    decode_each!([&m], |_m: GatherRequest| {});
}

#[test]
fn gather_many_request() {
    let m = GatherManyRequest {
        graph_id: 7,
        keys: vec!["a".into(), "b".into()],
    };
    decode_each!([&m], |_m: GatherManyRequest| {});
}

#[test]
fn cancel_request() {
    decode_each!([&CancelRequest { graph_id: 3 }], |_m: CancelRequest| {});
}

#[test]
fn cluster_info_request() {
    decode_each!(
        [&CancelRequest { graph_id: 3 }],
        |_m: ClusterInfoRequest| {}
    );
}

#[test]
fn retire_workers_request() {
    let m = RetireWorkersRequest {
        workers: vec!["w1".into()],
        count: 2,
        timeout_seconds: 30,
    };
    decode_each!([&m], |_m: RetireWorkersRequest| {});
}

#[test]
fn sql_request() {
    let m = SqlRequest {
        sql: "SELECT count(*) FROM t".into(),
        tables: vec![SqlTable {
            name: "t".into(),
            key: "k".into(),
            schema: vec![0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0],
        }],
        one_output: true,
    };
    decode_each!([&m], |_m: SqlRequest| {});
}

// What the client reads back: the SQL plan's tasks, cluster info, events
// and answers.

#[test]
fn sql_response() {
    let m = SqlResponse {
        result: Some(sql_response::Result::Query(SqlQuery {
            tasks: vec![task("s0", &[], vec![]), task("s1", &["s0"], vec![1])],
            outputs: vec!["s1".into()],
            explain: "plan".into(),
            stages: 2,
        })),
    };
    decode_each!([&m], |m: SqlResponse| {
        if let Some(sql_response::Result::Query(q)) = m.result {
            tasks(q.tasks);
        }
    });
}

#[test]
fn cluster_info_response() {
    let m = ClusterInfoResponse {
        workers: vec![WorkerInfo {
            id: 1,
            name: "w".into(),
            nthreads: 2,
            kinds: vec!["python".into()],
            ..Default::default()
        }],
        tasks: vec![StateCount {
            state: "memory".into(),
            count: 3,
        }],
        graphs: 1,
        scheduler_version: "0.1.0".into(),
        no_worker: vec![KindWait {
            kind: "python".into(),
            tasks: 4,
        }],
    };
    decode_each!([&m], |_m: ClusterInfoResponse| {});
}

#[test]
fn run_event() {
    let m = RunEvent {
        event: Some(run_event::Event::Failed(GraphFailed {
            graph_id: 1,
            key: "x".into(),
            worker: "w".into(),
            error: "boom".into(),
            lost_outputs: vec!["y".into()],
            exception: vec![1, 2, 3],
        })),
    };
    decode_each!([&m], |_m: RunEvent| {});
}

#[test]
fn cancel_response() {
    decode_each!(
        [&CancelResponse { cancelled: true }],
        |_m: CancelResponse| {}
    );
}

#[test]
fn retire_workers_response() {
    let m = RetireWorkersResponse {
        retired: vec!["w".into()],
    };
    decode_each!([&m], |_m: RetireWorkersResponse| {});
}

// ------------------------------------------------------------ WorkerControl

#[test]
fn worker_batches() {
    let m = daskrs_proto::worker_batch(vec![
        worker_message::Msg::Register(Register {
            name: "w".into(),
            address: "10.0.0.1:8788".into(),
            nthreads: 2,
            memory_limit: 1 << 30,
            kinds: vec!["python".into()],
            version: "0.1.0".into(),
            python: "{}".into(),
        }),
        worker_message::Msg::Finished(TaskFinished {
            task_id: 4,
            nbytes: 80,
            format: DataFormat::Arrow as i32,
            duration: 0.5,
            transfer_bytes: 10,
            waited: 0.25,
            stop: 12.5,
            fetch_start: 11.0,
            fetch_stop: 11.75,
            thread: 3,
        }),
        worker_message::Msg::Erred(TaskErred {
            task_id: 5,
            error: "e".into(),
            missing_inputs: vec![1, 2],
            exception: vec![9],
        }),
    ]);
    decode_each!([&m], |b: WorkerBatch| {
        for msg in b.messages.into_iter().filter_map(|m| m.msg) {
            if let worker_message::Msg::Finished(f) = msg {
                let _ = data_format(f.format);
            }
        }
    });
}

#[test]
fn scheduler_batches() {
    let m = daskrs_proto::scheduler_batch(vec![
        scheduler_message::Msg::Welcome(Welcome {
            worker_id: 1,
            heartbeat_interval_ms: 500,
        }),
        scheduler_message::Msg::Compute(ComputeTask {
            task_id: 9,
            key: "k".into(),
            kind: "sum".into(),
            payload: Bytes::from_static(b"{}"),
            inputs: vec![3, 4],
            input_parts: vec![-1, 2],
            locations: vec![InputLocation {
                task_id: 3,
                addresses: vec!["10.0.0.2:8788".into()],
                nbytes: 64,
            }],
            priority: Some(TaskPriority {
                user: 1,
                graph: 2,
                order: 3,
            }),
        }),
        scheduler_message::Msg::Free(FreeResults { task_ids: vec![3] }),
    ]);
    decode_each!([&m], |b: SchedulerBatch| {
        for msg in b.messages.into_iter().filter_map(|m| m.msg) {
            if let scheduler_message::Msg::Compute(c) = msg {
                let _ = Assignment::try_from(c);
            }
        }
    });
}

// ------------------------------------------------------------ PeerData

#[test]
fn fetch_request() {
    let m = FetchRequest {
        task_id: 3,
        part: Some(1),
    };
    decode_each!([&m], |_m: FetchRequest| {});
}

#[test]
fn fetch_many_request() {
    let m = FetchManyRequest {
        task_ids: vec![3, 4, 5],
    };
    decode_each!([&m], |_m: FetchManyRequest| {});
}

// ------------------------------------------------------------ results

/// A chunk stream as one message, for the fuzzer to bend.
#[derive(Clone, PartialEq, Message)]
struct Chunks {
    #[prost(message, repeated, tag = "1")]
    chunks: Vec<DataChunk>,
    #[prost(message, repeated, tag = "2")]
    tagged: Vec<GatheredChunk>,
    #[prost(uint32, tag = "3")]
    wanted: u32,
}

#[test]
fn chunk_streams() {
    let whole = Chunks {
        chunks: vec![chunk(b"abcd", DataFormat::Opaque, 4)],
        tagged: vec![
            GatheredChunk {
                index: 0,
                chunk: Some(chunk(b"ab", DataFormat::Pickle, 4)),
            },
            GatheredChunk {
                index: 1,
                chunk: Some(chunk(b"xyz", DataFormat::Arrow, 3)),
            },
            GatheredChunk {
                index: 0,
                chunk: Some(chunk(b"cd", DataFormat::Unspecified, 0)),
            },
        ],
        wanted: 2,
    };
    let split = Chunks {
        chunks: vec![
            chunk(b"ab", DataFormat::Pieces, 5),
            chunk(b"cde", DataFormat::Unspecified, 0),
        ],
        ..Default::default()
    };
    decode_each!([&whole, &split], |m: Chunks| {
        let stream = futures::stream::iter(m.chunks.into_iter().map(Ok));
        let _ = futures::executor::block_on(chunks::assemble(stream));
        // The client asks for at most as many results as it names.
        let n = (m.wanted as usize).min(1024);
        let tagged = futures::stream::iter(m.tagged.into_iter().map(Ok));
        let _ = futures::executor::block_on(chunks::assemble_many(tagged, n));
    });
}

#[test]
fn pieces_of_a_result() {
    let packed = pieces::pack(&[
        Bytes::from_static(b"one"),
        Bytes::new(),
        Bytes::from_static(b"three"),
    ]);
    let examples: [&[u8]; 1] = [&packed];
    bolero::check!()
        .with_type::<fuzz::Input>()
        .with_iterations(fuzz::inputs(20_000))
        .for_each(|input| {
            let buf = Bytes::from(fuzz::bytes(&examples, input));
            if let Ok(n) = pieces::count(&buf) {
                for i in 0..n.min(64) + 1 {
                    let _ = pieces::piece(&buf, i);
                }
            }
        });
}
