//! The task registry: kinds by name, and the built-in ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, Scalar};
use arrow::compute::kernels::numeric;
use daskrs_core::kinds::{
    BlobArgs, FailArgs, LiteralArgs, RandomArgs, RangeArgs, SleepArgs, parse_args,
};

use crate::TaskError;
use crate::data::{Data, concat_numeric, unify};

/// Something a worker can run: takes the task's payload and its inputs'
/// results, in the order of its dependencies, and returns its result.
pub trait TaskKind: Send + Sync {
    fn run(&self, payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError>;

    /// Whether results of the task with this payload hold something outside
    /// the worker (an upload not yet committed) that [`TaskKind::release`]
    /// must let go of when the result is dropped.
    fn holds_external(&self, _payload: &[u8]) -> bool {
        false
    }

    /// Called, on a blocking thread, with a result of a task for which
    /// `holds_external` was true, when the worker drops it.
    fn release(&self, _result: &Data) {}

    /// Runs the task `task`; kinds that can stop a running task (see
    /// [`TaskKind::cancel`]) need to know which it is.
    fn run_task(&self, _task: u64, payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError> {
        self.run(payload, inputs)
    }

    /// Whether short tasks of this kind are worth handing over several at
    /// a time ([`TaskKind::run_batch`]): true where each handing over costs
    /// more than a short task's run.
    fn batches(&self) -> bool {
        false
    }

    /// Runs `tasks` in order and calls `answer` with each one's index, its
    /// result and the seconds it ran, as each ends (a kind may answer in
    /// another order). Every task is answered once.
    fn run_batch(
        &self,
        tasks: &[BatchTask<'_>],
        answer: &mut dyn FnMut(usize, Result<Data, TaskError>, f64),
    ) {
        for (i, t) in tasks.iter().enumerate() {
            let started = Instant::now();
            let result = self.run_task(t.task, t.payload, t.inputs);
            answer(i, result, started.elapsed().as_secs_f64());
        }
    }

    /// The scheduler no longer wants the running task `task`: stop it if
    /// the kind can. Its run then ends with an error, which is dropped.
    fn cancel(&self, _task: u64) {}

    /// Memory the kind's tasks use outside the worker's process (its
    /// executor processes), counted toward the worker's memory limit.
    fn resident_bytes(&self) -> u64 {
        0
    }

    /// Lets go of idle resources outside the process (idle executors that
    /// may hold on to memory), when the worker is paused with nothing to run.
    fn trim(&self) {}

    /// The running task whose process holds the most memory outside the
    /// worker: its id and resident bytes.
    fn largest_running(&self) -> Option<(u64, u64)> {
        None
    }

    /// Stops the running task `task` to give its memory back; its run ends
    /// with an error that says `why`.
    fn stop_for_memory(&self, _task: u64, _why: String) {}
}

/// One task of a batch: its id, payload and inputs.
pub struct BatchTask<'a> {
    pub task: u64,
    pub payload: &'a [u8],
    pub inputs: &'a [Data],
}

impl<F> TaskKind for F
where
    F: Fn(&[u8], &[Data]) -> Result<Data, TaskError> + Send + Sync,
{
    fn run(&self, payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError> {
        self(payload, inputs)
    }
}

/// Kinds by name. Other crates (the SQL engine) add theirs with [`Registry::register`].
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, Arc<dyn TaskKind>>,
    /// What the Python executors said of their versions, as JSON.
    python_versions: Option<String>,
}

impl Registry {
    pub fn empty() -> Registry {
        Registry::default()
    }

    /// Every built-in kind of `daskrs_core::kinds::BUILTIN`.
    pub fn builtin() -> Registry {
        let mut r = Registry::default();
        r.register("literal", literal);
        r.register("range", range);
        r.register("random", random);
        r.register("add", |p: &[u8], i: &[Data]| elementwise(p, i, Op::Add));
        r.register("sub", |p: &[u8], i: &[Data]| elementwise(p, i, Op::Sub));
        r.register("mul", |p: &[u8], i: &[Data]| elementwise(p, i, Op::Mul));
        r.register("div", |p: &[u8], i: &[Data]| elementwise(p, i, Op::Div));
        r.register("sum", |_: &[u8], i: &[Data]| reduce(i, Reduce::Sum));
        r.register("min", |_: &[u8], i: &[Data]| reduce(i, Reduce::Min));
        r.register("max", |_: &[u8], i: &[Data]| reduce(i, Reduce::Max));
        r.register("count", |_: &[u8], i: &[Data]| reduce(i, Reduce::Count));
        r.register("sleep", sleep);
        r.register("fail", fail);
        r.register("blob", blob);
        r.register("noop", |_: &[u8], _: &[Data]| Ok(Data::empty()));
        debug_assert!(
            daskrs_core::kinds::BUILTIN
                .iter()
                .all(|(n, _, _)| r.kinds.contains_key(*n))
        );
        r
    }

    /// Adds `sql.stage`: one partition of a distributed SQL stage.
    pub fn with_sql(mut self, executor: Arc<daskrs_engine::Executor>) -> Registry {
        self.register(daskrs_engine::STAGE_KIND, SqlStage(executor));
        self
    }

    /// Adds `python`: tasks run by executor processes of that interpreter.
    pub fn with_python(mut self, kind: crate::python::PythonKind) -> Registry {
        self.python_versions = Some(kind.versions().to_string());
        self.register(crate::python::KIND, kind);
        self
    }

    /// Memory the kinds' tasks use outside this process.
    pub fn resident_bytes(&self) -> u64 {
        self.kinds.values().map(|k| k.resident_bytes()).sum()
    }

    /// See [`TaskKind::trim`].
    pub fn trim(&self) {
        for k in self.kinds.values() {
            k.trim();
        }
    }

    /// Stops the running task whose process holds the most memory outside
    /// the worker, if that is at least `min` bytes; `why` says why, given
    /// its resident bytes. Its resident bytes, if one was stopped.
    pub fn stop_largest(&self, min: u64, why: impl Fn(u64) -> String) -> Option<u64> {
        let (kind, task, rss) = self
            .kinds
            .values()
            .filter_map(|k| k.largest_running().map(|(t, rss)| (k, t, rss)))
            .max_by_key(|(_, _, rss)| *rss)
            .filter(|(_, _, rss)| *rss >= min)?;
        kind.stop_for_memory(task, why(rss));
        Some(rss)
    }

    /// The Python executors' versions (JSON), when the worker runs Python.
    pub fn python_versions(&self) -> &str {
        self.python_versions.as_deref().unwrap_or_default()
    }

    pub fn register(&mut self, name: &str, kind: impl TaskKind + 'static) {
        self.kinds.insert(name.to_string(), Arc::new(kind));
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn TaskKind>> {
        self.kinds.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kinds.keys().cloned().collect();
        v.sort();
        v
    }
}

/// `sql.stage`: runs a stage partition; a writer's result is the manifest of
/// an upload that only the commit makes visible, aborted if dropped before.
struct SqlStage(Arc<daskrs_engine::Executor>);

impl TaskKind for SqlStage {
    fn run(&self, payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError> {
        let mut streams = Vec::with_capacity(inputs.len());
        for (i, d) in inputs.iter().enumerate() {
            if d.format != daskrs_core::DataFormat::Arrow {
                return Err(TaskError::Corrupt(format!(
                    "input {i} is {} data, not the Arrow output of a stage",
                    d.format.name()
                )));
            }
            streams.push(d.bytes.clone());
        }
        match self.0.run(payload, streams)? {
            daskrs_engine::StageOutput::Whole(bytes) => Ok(Data {
                format: daskrs_core::DataFormat::Arrow,
                bytes,
            }),
            daskrs_engine::StageOutput::Pieces(p) => Ok(Data::pieces(&p)),
        }
    }

    fn holds_external(&self, payload: &[u8]) -> bool {
        daskrs_engine::Executor::holds_uncommitted(payload)
    }

    fn release(&self, result: &Data) {
        if result.format == daskrs_core::DataFormat::Arrow {
            self.0.release(result.bytes.clone());
        }
    }
}

fn literal(payload: &[u8], _: &[Data]) -> Result<Data, TaskError> {
    let a: LiteralArgs = parse_args("literal", payload).map_err(TaskError::Failed)?;
    let array: ArrayRef = if a.values.iter().all(|v| v.is_i64()) {
        Arc::new(Int64Array::from_iter_values(
            a.values.iter().filter_map(|v| v.as_i64()),
        ))
    } else {
        Arc::new(Float64Array::from_iter_values(
            a.values.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)),
        ))
    };
    Data::from_array(array)
}

fn range(payload: &[u8], _: &[Data]) -> Result<Data, TaskError> {
    let a: RangeArgs = parse_args("range", payload).map_err(TaskError::Failed)?;
    daskrs_core::kinds::check("range", payload, 0).map_err(TaskError::Failed)?;
    let values: Vec<i64> = if a.step > 0 {
        (a.start..a.stop).step_by(a.step as usize).collect()
    } else {
        let mut v = Vec::new();
        let mut x = a.start;
        while x > a.stop {
            v.push(x);
            x = x.saturating_add(a.step);
        }
        v
    };
    Data::from_array(Arc::new(Int64Array::from(values)))
}

fn random(payload: &[u8], _: &[Data]) -> Result<Data, TaskError> {
    let a: RandomArgs = parse_args("random", payload).map_err(TaskError::Failed)?;
    daskrs_core::kinds::check("random", payload, 0).map_err(TaskError::Failed)?;
    // splitmix64: fast, and the same numbers for the same seed everywhere.
    let mut state = a.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let values = (0..a.n).map(|_| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    });
    Data::from_array(Arc::new(Float64Array::from_iter_values(values)))
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

/// Folds the inputs element-wise; an input of length one is broadcast.
fn elementwise(_: &[u8], inputs: &[Data], op: Op) -> Result<Data, TaskError> {
    let mut arrays = Vec::with_capacity(inputs.len());
    for (i, d) in inputs.iter().enumerate() {
        let a = concat_numeric(&d.arrays().map_err(|e| e.context(format!("input {i}")))?)?;
        arrays.push(a);
    }
    let arrays = unify(&arrays)?;
    let mut acc = arrays[0].clone();
    for (i, b) in arrays.iter().enumerate().skip(1) {
        let result = match (acc.len(), b.len()) {
            (x, y) if x == y => apply(op, &acc, b),
            (1, _) => apply(op, &Scalar::new(acc.clone()), b),
            (_, 1) => apply(op, &acc, &Scalar::new(b.clone())),
            (x, y) => {
                return Err(TaskError::Failed(format!(
                    "input {i} has {y} values but the ones before it have {x}; lengths must match or be 1"
                )));
            }
        };
        acc = result.map_err(|e| TaskError::Failed(format!("input {i}: {e}")))?;
    }
    Data::from_array(acc)
}

fn apply(
    op: Op,
    a: &dyn arrow::array::Datum,
    b: &dyn arrow::array::Datum,
) -> Result<ArrayRef, arrow::error::ArrowError> {
    match op {
        Op::Add => numeric::add(a, b),
        Op::Sub => numeric::sub(a, b),
        Op::Mul => numeric::mul(a, b),
        Op::Div => numeric::div(a, b),
    }
}

#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Min,
    Max,
    Count,
}

/// Reduces every value of every input to one value.
fn reduce(inputs: &[Data], how: Reduce) -> Result<Data, TaskError> {
    let mut all = Vec::new();
    for (i, d) in inputs.iter().enumerate() {
        all.extend(d.arrays().map_err(|e| e.context(format!("input {i}")))?);
    }
    let values = concat_numeric(&all)?;
    use arrow::datatypes::DataType;
    let out: ArrayRef = match (how, values.data_type()) {
        (Reduce::Count, _) => Arc::new(Int64Array::from(vec![
            (values.len() - values.null_count()) as i64,
        ])),
        (how, DataType::Int64) => {
            let a = values
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64 data type");
            let v = match how {
                Reduce::Sum => arrow::compute::sum_checked(a)
                    .map_err(|e| TaskError::Failed(format!("sum: {e}")))?,
                Reduce::Min => arrow::compute::min(a),
                _ => arrow::compute::max(a),
            };
            Arc::new(Int64Array::from(vec![v]))
        }
        (how, _) => {
            let f = arrow::compute::cast(&values, &DataType::Float64)
                .map_err(|e| TaskError::Failed(e.to_string()))?;
            let a = f
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64");
            let v = match how {
                Reduce::Sum => arrow::compute::sum(a),
                Reduce::Min => arrow::compute::min(a),
                _ => arrow::compute::max(a),
            };
            Arc::new(Float64Array::from(vec![v]))
        }
    };
    Data::from_array(out)
}

fn sleep(payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError> {
    let a: SleepArgs = parse_args("sleep", payload).map_err(TaskError::Failed)?;
    std::thread::sleep(Duration::from_millis(a.ms));
    Ok(inputs.first().cloned().unwrap_or_else(Data::empty))
}

fn fail(payload: &[u8], _: &[Data]) -> Result<Data, TaskError> {
    let a: FailArgs = parse_args("fail", payload).map_err(TaskError::Failed)?;
    Err(TaskError::Failed(a.message))
}

fn blob(payload: &[u8], _: &[Data]) -> Result<Data, TaskError> {
    let a: BlobArgs = parse_args("blob", payload).map_err(TaskError::Failed)?;
    daskrs_core::kinds::check("blob", payload, 0).map_err(TaskError::Failed)?;
    let bytes: Vec<u8> = (0..a.bytes).map(|i| (i % 251) as u8).collect();
    Ok(Data::opaque(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: &str, payload: &str, inputs: &[Data]) -> Result<Data, TaskError> {
        Registry::builtin()
            .get(kind)
            .unwrap()
            .run(payload.as_bytes(), inputs)
    }

    fn ints(d: &Data) -> Vec<Option<i64>> {
        let a = concat_numeric(&d.arrays().unwrap()).unwrap();
        a.as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .iter()
            .collect()
    }

    fn floats(d: &Data) -> Vec<Option<f64>> {
        let a = concat_numeric(&d.arrays().unwrap()).unwrap();
        a.as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .iter()
            .collect()
    }

    #[test]
    fn arithmetic_over_arrays() {
        let x = run("range", r#"{"start": 0, "stop": 5}"#, &[]).unwrap();
        let y = run("literal", r#"{"values": [10]}"#, &[]).unwrap();
        let sum = run("add", "", &[x.clone(), y.clone()]).unwrap();
        assert_eq!(ints(&sum), [10, 11, 12, 13, 14].map(Some));
        let sq = run("mul", "", &[x.clone(), x.clone()]).unwrap();
        assert_eq!(ints(&run("sum", "", &[sq]).unwrap()), [Some(30)]);
        let half = run(
            "div",
            "",
            &[
                x.clone(),
                run("literal", r#"{"values": [2.0]}"#, &[]).unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(floats(&half), [0.0, 0.5, 1.0, 1.5, 2.0].map(Some));
        assert_eq!(ints(&run("count", "", &[x.clone(), y]).unwrap()), [Some(6)]);
        assert_eq!(
            ints(&run("max", "", std::slice::from_ref(&x)).unwrap()),
            [Some(4)]
        );
        assert_eq!(
            ints(&run("sub", "", &[x.clone(), x]).unwrap()),
            [0, 0, 0, 0, 0].map(Some)
        );
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let x = run("range", r#"{"start": 0, "stop": 5}"#, &[]).unwrap();
        let y = run("range", r#"{"start": 0, "stop": 3}"#, &[]).unwrap();
        let e = run("add", "", &[x.clone(), y]).unwrap_err();
        assert!(
            matches!(&e, TaskError::Failed(m) if m.contains("lengths must match")),
            "{e}"
        );
        let e = run("sum", "", &[Data::opaque(vec![1u8, 2, 3])]).unwrap_err();
        assert!(
            matches!(&e, TaskError::Corrupt(m) if m.contains("expected an Arrow result")),
            "{e}"
        );
        let corrupt = Data {
            format: daskrs_core::DataFormat::Arrow,
            bytes: vec![0xffu8; 16].into(),
        };
        let e = run("sum", "", &[corrupt]).unwrap_err();
        assert!(
            matches!(&e, TaskError::Corrupt(m) if m.contains("corrupt Arrow IPC")),
            "{e}"
        );
        let big = run("literal", &format!(r#"{{"values": [{}]}}"#, i64::MAX), &[]).unwrap();
        let e = run("sum", "", &[big.clone(), big]).unwrap_err();
        assert!(
            matches!(&e, TaskError::Failed(m) if m.contains("overflow")),
            "{e}"
        );
        assert_eq!(
            run("fail", r#"{"message": "nope"}"#, &[]).unwrap_err(),
            TaskError::Failed("nope".into())
        );
        let e = run(
            "div",
            "",
            &[
                x.clone(),
                run("literal", r#"{"values": [0]}"#, &[]).unwrap(),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(&e, TaskError::Failed(m) if m.to_lowercase().contains("divide by zero")),
            "{e}"
        );
    }

    #[test]
    fn random_is_repeatable_and_in_range() {
        let a = floats(&run("random", r#"{"n": 1000, "seed": 7}"#, &[]).unwrap());
        let b = floats(&run("random", r#"{"n": 1000, "seed": 7}"#, &[]).unwrap());
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (0.0..1.0).contains(&v.unwrap())));
        let mean: f64 = a.iter().map(|v| v.unwrap()).sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }
}
