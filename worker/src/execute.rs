//! Running one task on a task thread: its inputs gathered from what was
//! fetched and what the store holds, its kind called (a panic becomes the
//! task's error), its result stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use daskrs_core::{Assignment, DataFormat, Input};

use crate::TaskError;
use crate::data::Data;
use crate::kinds::TaskKind;
use crate::session::Shared;

/// How a task run ended.
pub struct Ran {
    /// The stored result's size and format.
    pub result: Result<(u64, DataFormat), TaskError>,
    /// Seconds the kind ran, fetching excluded.
    pub duration: f64,
    /// The kind, when the stored result holds something outside the worker.
    pub external: Option<Arc<dyn TaskKind>>,
}

/// Runs one task on the current (blocking) thread and stores its result,
/// unless the store was cleared since `generation`.
pub fn run_task(
    shared: &Shared,
    generation: u64,
    a: &Assignment,
    fetched: HashMap<Input, Data>,
) -> Ran {
    let started = Instant::now();
    let kind = shared.registry.get(&a.kind);
    let result = (|| {
        let kind = kind.clone().ok_or_else(|| {
            TaskError::Failed(format!("this worker has no task kind {:?}", a.kind))
        })?;
        let inputs = gather_inputs(shared, a, fetched)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kind.run_task(a.task, &a.payload, &inputs)
        }))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TaskError::Failed(format!("task kind {:?} panicked: {msg}", a.kind))
        })?
    })();
    let duration = started.elapsed().as_secs_f64();
    let failed = |e: TaskError| Ran {
        result: Err(e),
        duration,
        external: None,
    };
    let data = match result {
        Ok(data) => data,
        Err(e) => return failed(e),
    };
    let (n, format) = (data.len(), data.format);
    let external = kind.filter(|k| k.holds_external(&a.payload));
    let copy = external.as_ref().map(|_| data.clone());
    if shared.store.put_in(generation, a.task, data) {
        return Ran {
            result: Ok((n, format)),
            duration,
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
