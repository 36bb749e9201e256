//! Fuzz target of the scheduler's state machine fed what its services
//! decode: clients' submissions and releases, workers' registrations and
//! reports, in any order and from any worker, known, gone or never seen,
//! about any task id. No script may panic it. `cargo test` plays a bounded
//! number of scripts (see `daskrs_core::fuzz`), bent from the one below;
//! `cargo bolero test service::fuzz::scripts -p daskrs-scheduler` plays
//! them for as long as asked, guided by coverage.

use std::time::{Duration, Instant};

use bytes::Bytes;
use daskrs_core::fuzz;
use daskrs_proto::worker_message::Msg as Up;
use daskrs_proto::{
    Heartbeat, OpenSession, Register, ReleaseKeys, ReplicaAdded, ReplicaFailed, RetireMe,
    RunRequest, StealResponse, SubmitGraph, TaskErred, TaskFinished, TaskSpec, WorkerBatch,
    run_request,
};
use prost::Message;

use super::client::submission;
use super::worker::{apply_to, registration};
use crate::state::{RemoveReason, State, StateConfig, WorkerId};

/// One thing that happens to the scheduler.
#[derive(Clone, PartialEq, Message)]
struct Step {
    /// Which session or worker it comes from.
    #[prost(uint32, tag = "1")]
    from: u32,
    #[prost(message, optional, tag = "2")]
    client: Option<RunRequest>,
    /// A batch that opens with `register` opens a new worker's stream.
    #[prost(message, optional, tag = "3")]
    worker: Option<WorkerBatch>,
    /// The worker's stream ends afterwards.
    #[prost(bool, tag = "4")]
    leave: bool,
    /// Time passes afterwards.
    #[prost(uint32, tag = "5")]
    later_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
struct Script {
    #[prost(message, repeated, tag = "1")]
    steps: Vec<Step>,
}

/// The most steps of one script played.
const STEPS: usize = 256;

fn play(script: Script) {
    let mut state = State::new(StateConfig::default());
    let mut now = Instant::now();
    let mut sessions = vec![state.open_session("fuzz".into())];
    let mut workers: Vec<WorkerId> = Vec::new();
    for step in script.steps.into_iter().take(STEPS) {
        let from = step.from as usize;
        match step.client.and_then(|r| r.msg) {
            Some(run_request::Msg::Submit(sub)) => {
                if let Ok(sub) = submission(sub) {
                    // From an even sender into a session, else a graph of its own.
                    let _ = if from.is_multiple_of(2) {
                        state.submit_to(sessions[from / 2 % sessions.len()], sub)
                    } else {
                        state.submit(sub).map(|(_, n)| n)
                    };
                }
            }
            Some(run_request::Msg::Release(r)) => {
                state.release_keys(sessions[from % sessions.len()], &r.keys)
            }
            Some(run_request::Msg::Session(s)) => sessions.push(state.open_session(s.name)),
            Some(run_request::Msg::Sql(_)) | None => {}
        }
        if let Some(batch) = step.worker {
            let mut messages = batch.messages.into_iter().peekable();
            let register = match messages.peek().and_then(|m| m.msg.as_ref()) {
                Some(Up::Register(r)) => Some(r.clone()),
                _ => None,
            };
            let worker = match register {
                Some(r) => {
                    messages.next();
                    registration(r).ok().map(|reg| {
                        let id = state.add_worker(reg, now);
                        workers.push(id);
                        id
                    })
                }
                // One of the workers so far (gone or not), or one never seen.
                None => Some(
                    workers
                        .get(from % (workers.len() + 1))
                        .copied()
                        .unwrap_or(999),
                ),
            };
            if let Some(id) = worker {
                let rest = WorkerBatch {
                    messages: messages.collect(),
                    clock: 3.0,
                };
                apply_to(&mut state, id, rest, |_| {});
                if step.leave {
                    state.remove_worker(id, RemoveReason::Disconnected("fuzz".into()));
                }
            }
        }
        now += Duration::from_millis(u64::from(step.later_ms.min(120_000)));
        state.tick(now);
        state.report_progress();
        let _ = state.take_outbox();
    }
}

fn spec(key: &str, kind: &str, deps: &[&str]) -> TaskSpec {
    TaskSpec {
        key: key.into(),
        kind: kind.into(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        payload: Bytes::new(),
        ..Default::default()
    }
}

fn report(from: u32, messages: Vec<Up>) -> Step {
    Step {
        from,
        worker: Some(daskrs_proto::worker_batch(messages)),
        ..Default::default()
    }
}

fn register(name: &str, kinds: &[&str]) -> Up {
    Up::Register(Register {
        name: name.into(),
        address: format!("{name}:8788"),
        nthreads: 2,
        memory_limit: 1 << 30,
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        version: "0".into(),
        python: String::new(),
    })
}

fn finished(task_id: u64) -> Up {
    Up::Finished(TaskFinished {
        task_id,
        nbytes: 8,
        format: 2,
        duration: 0.01,
        transfer_bytes: 0,
        waited: 0.0,
        stop: 2.5,
        fetch_start: 1.0,
        fetch_stop: 1.5,
        thread: 1,
    })
}

/// Two workers run a diamond in a session and a graph of its own; one
/// fails a task for a lost input, replicates, is stolen from, retires.
fn example() -> Script {
    let submit = |from, tasks: Vec<TaskSpec>, outputs: &[&str]| Step {
        from,
        client: Some(RunRequest {
            msg: Some(run_request::Msg::Submit(SubmitGraph {
                tasks,
                outputs: outputs.iter().map(|o| o.to_string()).collect(),
                name: "g".into(),
                explain: String::new(),
            })),
        }),
        ..Default::default()
    };
    let client = |msg| Step {
        client: Some(RunRequest { msg: Some(msg) }),
        ..Default::default()
    };
    let diamond = vec![
        spec("a", "noop", &[]),
        spec("b", "noop", &["a"]),
        spec("c", "python", &["a"]),
        spec("d", "noop", &["b", "c"]),
    ];
    Script {
        steps: vec![
            report(0, vec![register("w1", &[]), finished(1)]),
            report(0, vec![register("w2", &["python"])]),
            submit(0, diamond, &["d"]),
            submit(
                1,
                vec![spec("x", "noop", &[]), spec("y", "noop", &["x", "x"])],
                &[],
            ),
            report(0, vec![finished(1), finished(5)]),
            report(
                1,
                vec![
                    Up::Heartbeat(Heartbeat {
                        memory_bytes: 1 << 20,
                        spilled_bytes: 0,
                        paused: true,
                        executed: 2,
                        managed_bytes: 1 << 19,
                        process_bytes: 1 << 21,
                        pause_bytes: 1 << 29,
                        spills: vec![daskrs_proto::Spill {
                            start: 1.0,
                            stop: 1.25,
                            bytes: 1 << 18,
                        }],
                    }),
                    Up::StealResponse(StealResponse {
                        task_id: 2,
                        stolen: true,
                    }),
                    Up::ReplicaAdded(ReplicaAdded {
                        task_id: 1,
                        nbytes: 8,
                    }),
                    Up::ReplicaFailed(ReplicaFailed {
                        task_id: 3,
                        error: "gone".into(),
                    }),
                ],
            ),
            report(
                0,
                vec![
                    Up::Erred(TaskErred {
                        task_id: 3,
                        error: "lost".into(),
                        missing_inputs: vec![1],
                        exception: Vec::new(),
                    }),
                    finished(2),
                    finished(3),
                    finished(6),
                ],
            ),
            client(run_request::Msg::Release(ReleaseKeys {
                keys: vec!["d".into(), "zz".into()],
            })),
            client(run_request::Msg::Session(OpenSession { name: "s2".into() })),
            Step {
                later_ms: 60_000,
                ..report(
                    1,
                    vec![Up::RetireMe(RetireMe {
                        reason: "idle".into(),
                    })],
                )
            },
            Step {
                leave: true,
                ..report(0, vec![finished(4)])
            },
        ],
    }
}

#[test]
fn scripts() {
    let example = example().encode_to_vec();
    let examples: [&[u8]; 1] = [&example];
    bolero::check!()
        .with_type::<fuzz::Input>()
        .with_iterations(fuzz::inputs(20_000))
        .for_each(|input| {
            if let Ok(script) = Script::decode(&fuzz::bytes(&examples, input)[..]) {
                play(script);
            }
        });
}
