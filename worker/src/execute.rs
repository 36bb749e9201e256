//! Running one task on a task thread: its inputs gathered from what was
//! fetched and what the store holds, its kind called (a panic becomes the
//! task's error), its result stored.

use std::collections::HashMap;
use std::sync::Arc;

use daskrs_core::{Assignment, DataFormat, Input};

use crate::TaskError;
use crate::data::Data;
use crate::kinds::{BatchTask, TaskKind};
use crate::session::Shared;
use crate::tasks::Started;

/// How a task run ended.
pub struct Ran {
    /// The stored result's size and format.
    pub result: Result<(u64, DataFormat), TaskError>,
    /// Seconds the kind ran, fetching excluded.
    pub duration: f64,
    /// When it ended, on the process's clock ([`daskrs_core::clock`]), and
    /// the pool thread it ran on.
    pub stop: f64,
    pub thread: u32,
    /// The kind, when the stored result holds something outside the worker.
    pub external: Option<Arc<dyn TaskKind>>,
}

/// Runs a job, one task or several of one kind, on the current (blocking)
/// thread (see [`TaskKind::run_batch`]), storing each result unless the
/// store was cleared since `generation`, and passing each task's end to
/// `done` as it comes.
pub fn run_batch(
    shared: &Shared,
    generation: u64,
    batch: Vec<Started>,
    done: &mut dyn FnMut(u64, Ran),
) {
    let Some(first) = batch.first() else {
        return;
    };
    let Some(kind) = shared.registry.get(&first.assignment.kind) else {
        for s in batch {
            let error = no_kind(&s.assignment);
            done(
                s.assignment.task,
                finish(shared, generation, None, &s.assignment, Err(error), 0.0),
            );
        }
        return;
    };
    let mut runnable = Vec::with_capacity(batch.len());
    for s in batch {
        match gather_inputs(shared, &s.assignment, s.fetched) {
            Ok(inputs) => runnable.push((s.assignment, inputs)),
            Err(e) => done(
                s.assignment.task,
                finish(shared, generation, Some(&kind), &s.assignment, Err(e), 0.0),
            ),
        }
    }
    let tasks: Vec<BatchTask<'_>> = runnable
        .iter()
        .map(|(a, inputs)| BatchTask {
            task: a.task,
            payload: &a.payload,
            inputs,
        })
        .collect();
    let mut answered = vec![false; tasks.len()];
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kind.run_batch(&tasks, &mut |i, result, seconds| {
            let Some((a, _)) = runnable.get(i) else {
                return;
            };
            if answered[i] {
                return;
            }
            done(
                a.task,
                finish(shared, generation, Some(&kind), a, result, seconds),
            );
            answered[i] = true;
        })
    }));
    for (i, (a, _)) in runnable.iter().enumerate() {
        if answered[i] {
            continue;
        }
        let error = match &ran {
            Err(p) => panicked(a, &**p),
            Ok(()) => TaskError::Failed(format!("task kind {:?} did not run the task", a.kind)),
        };
        done(
            a.task,
            finish(shared, generation, Some(&kind), a, Err(error), 0.0),
        );
    }
}

fn no_kind(a: &Assignment) -> TaskError {
    TaskError::Failed(format!("this worker has no task kind {:?}", a.kind))
}

fn panicked(a: &Assignment, p: &(dyn std::any::Any + Send)) -> TaskError {
    let msg = daskrs_core::panic_message(p).unwrap_or_default();
    TaskError::Failed(format!("task kind {:?} panicked: {msg}", a.kind))
}

/// Stores a task's result (unless the store was cleared since
/// `generation`) and says how its run ended.
fn finish(
    shared: &Shared,
    generation: u64,
    kind: Option<&Arc<dyn TaskKind>>,
    a: &Assignment,
    result: Result<Data, TaskError>,
    duration: f64,
) -> Ran {
    // Before storing: a spill the store makes is drawn apart.
    let stop = daskrs_core::clock::now();
    let thread = crate::pool::thread_index();
    let data = match result {
        Ok(data) => data,
        Err(e) => {
            return Ran {
                result: Err(e),
                duration,
                stop,
                thread,
                external: None,
            };
        }
    };
    let (n, format) = (data.len(), data.format);
    let external = kind.filter(|k| k.holds_external(&a.payload)).cloned();
    let copy = external.as_ref().map(|_| data.clone());
    if shared.store.put_in(generation, a.task, data) {
        return Ran {
            result: Ok((n, format)),
            duration,
            stop,
            thread,
            external,
        };
    }
    // Not kept (the store was cleared for a new session): nobody will ever
    // commit what it holds, so let go of it here.
    if let (Some(kind), Some(data)) = (&external, &copy) {
        kind.release(data);
    }
    Ran {
        result: Ok((n, format)),
        duration,
        stop,
        thread,
        external: None,
    }
}

/// The task's inputs in order: fetched ones, else read (and claimed) from
/// the store, each cut to its piece.
fn gather_inputs(
    shared: &Shared,
    a: &Assignment,
    fetched: HashMap<Input, Data>,
) -> Result<Vec<Data>, TaskError> {
    let mut inputs = Vec::with_capacity(a.inputs.len());
    for input in &a.inputs {
        let d = match fetched.get(input) {
            Some(d) => d.clone(),
            None => {
                let id = input.task;
                let whole = shared
                    .store
                    .claim(id)
                    .map_err(|e| TaskError::Failed(e.to_string()))?
                    .ok_or_else(|| {
                        TaskError::Failed(format!("input {id} is no longer held by this worker"))
                    })?;
                match input.piece {
                    Some(p) => whole
                        .piece(p)
                        .map_err(|e| e.context(format!("input {id}")))?,
                    None => whole,
                }
            }
        };
        inputs.push(d);
    }
    Ok(inputs)
}
