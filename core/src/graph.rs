//! Task specs and the validation every graph passes before anything runs.

use std::collections::HashMap;

use bytes::Bytes;

/// Keys longer than this are rejected: they are names, not data.
pub const MAX_KEY_LEN: usize = 1024;

/// One task as a client describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub key: String,
    /// A name in the workers' task registry, e.g. `arith.sum`.
    pub kind: String,
    /// Kind-specific arguments; the built-in kinds take JSON.
    pub payload: Bytes,
    /// Keys whose results are this task's inputs, in order; a key may repeat.
    pub deps: Vec<String>,
    /// For each dependency, the piece of its result to take (a shuffle's
    /// output is cut into pieces); empty means whole results for all.
    pub parts: Vec<Option<u32>>,
    /// Higher runs earlier among tasks that are ready at the same time.
    pub priority: i32,
    /// How many times a failing run is tried again before the task errs.
    pub retries: u32,
}

impl TaskSpec {
    pub fn new(key: impl Into<String>, kind: impl Into<String>) -> Self {
        TaskSpec {
            key: key.into(),
            kind: kind.into(),
            payload: Bytes::new(),
            deps: Vec::new(),
            parts: Vec::new(),
            priority: 0,
            retries: 0,
        }
    }

    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    pub fn deps<I, S>(mut self, deps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.deps = deps.into_iter().map(Into::into).collect();
        self
    }

    /// Which piece of each dependency's result to take, in the order of `deps`.
    pub fn parts(mut self, parts: Vec<Option<u32>>) -> Self {
        self.parts = parts;
        self
    }

    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("the graph has no tasks")]
    Empty,
    #[error("task #{index} has an empty key")]
    EmptyKey { index: usize },
    #[error("task key {key:?} is longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong { key: String },
    #[error("task {key:?} has an empty kind")]
    EmptyKind { key: String },
    #[error("task key {key:?} appears more than once")]
    DuplicateKey { key: String },
    #[error("task {key:?} depends on {dep:?}, which is not in the graph")]
    MissingDependency { key: String, dep: String },
    #[error("the graph has a cycle: {}", path.join(" -> "))]
    Cycle { path: Vec<String> },
    #[error("task {key:?} has unknown kind {kind:?}; known kinds: {known}")]
    UnknownKind {
        key: String,
        kind: String,
        known: String,
    },
    #[error("output {key:?} is not a task of the graph")]
    UnknownOutput { key: String },
    #[error("task {key:?}: {message}")]
    InvalidArguments { key: String, message: String },
    #[error("task {key:?} names pieces for {parts} inputs but has {deps}")]
    PartsMismatch {
        key: String,
        parts: usize,
        deps: usize,
    },
    #[error("graph {graph} is not open for more tasks")]
    NotOpen { graph: u64 },
    #[error(
        "the scheduler holds {held} tasks and this graph would add {adding}, over its limit of \
         {limit} (--max-tasks): release results no longer needed, or submit the work in parts"
    )]
    TooManyTasks {
        held: usize,
        adding: usize,
        limit: usize,
    },
}

/// A graph that passed validation, with its edges resolved to indices.
#[derive(Debug, Clone)]
pub struct ValidGraph {
    pub tasks: Vec<TaskSpec>,
    /// Inputs of each task as indices, in the order of `TaskSpec::deps`.
    pub inputs: Vec<Vec<u32>>,
    /// Distinct dependencies of each task.
    pub deps: Vec<Vec<u32>>,
    /// Distinct dependents of each task.
    pub dependents: Vec<Vec<u32>>,
    /// Position of each task in a depth-first topological order: running
    /// tasks in this order finishes one branch before starting the next,
    /// which keeps the results held at once small.
    pub order: Vec<u32>,
    /// Tasks whose results the client wants.
    pub outputs: Vec<u32>,
}

/// Checks a graph and resolves its edges. `outputs` empty means every task
/// that nothing depends on. `kind_known` decides which kinds exist.
pub fn validate(
    tasks: Vec<TaskSpec>,
    outputs: &[String],
    kind_known: impl Fn(&str) -> bool,
    known_kinds: impl Fn() -> String,
) -> Result<ValidGraph, GraphError> {
    if tasks.is_empty() {
        return Err(GraphError::Empty);
    }
    let mut index: HashMap<&str, u32> = HashMap::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if t.key.is_empty() {
            return Err(GraphError::EmptyKey { index: i });
        }
        if t.key.len() > MAX_KEY_LEN {
            return Err(GraphError::KeyTooLong { key: t.key.clone() });
        }
        if t.kind.is_empty() {
            return Err(GraphError::EmptyKind { key: t.key.clone() });
        }
        if index.insert(t.key.as_str(), i as u32).is_some() {
            return Err(GraphError::DuplicateKey { key: t.key.clone() });
        }
        if !t.parts.is_empty() && t.parts.len() != t.deps.len() {
            return Err(GraphError::PartsMismatch {
                key: t.key.clone(),
                parts: t.parts.len(),
                deps: t.deps.len(),
            });
        }
    }
    for t in &tasks {
        if !kind_known(&t.kind) {
            return Err(GraphError::UnknownKind {
                key: t.key.clone(),
                kind: t.kind.clone(),
                known: known_kinds(),
            });
        }
    }

    let n = tasks.len();
    let mut inputs = Vec::with_capacity(n);
    let mut deps = Vec::with_capacity(n);
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, t) in tasks.iter().enumerate() {
        let mut ins = Vec::with_capacity(t.deps.len());
        for d in &t.deps {
            match index.get(d.as_str()) {
                Some(&j) => ins.push(j),
                None => {
                    return Err(GraphError::MissingDependency {
                        key: t.key.clone(),
                        dep: d.clone(),
                    });
                }
            }
        }
        let mut uniq = ins.clone();
        uniq.sort_unstable();
        uniq.dedup();
        for &j in &uniq {
            dependents[j as usize].push(i as u32);
        }
        inputs.push(ins);
        deps.push(uniq);
    }

    if let Some(path) = find_cycle(&deps) {
        return Err(GraphError::Cycle {
            path: path
                .into_iter()
                .map(|i| tasks[i as usize].key.clone())
                .collect(),
        });
    }

    let outputs = if outputs.is_empty() {
        (0..n as u32)
            .filter(|&i| dependents[i as usize].is_empty())
            .collect()
    } else {
        // In the order asked for, each once.
        let mut out = Vec::with_capacity(outputs.len());
        let mut seen = vec![false; n];
        for k in outputs {
            match index.get(k.as_str()) {
                Some(&i) => {
                    if !std::mem::replace(&mut seen[i as usize], true) {
                        out.push(i);
                    }
                }
                None => return Err(GraphError::UnknownOutput { key: k.clone() }),
            }
        }
        out
    };
    let order = depth_first_order(&inputs, &dependents);
    drop(index);
    Ok(ValidGraph {
        tasks,
        inputs,
        deps,
        dependents,
        order,
        outputs,
    })
}

/// Kahn's algorithm; when it stalls, walks the remaining edges to name one
/// cycle, closing the path with its first key.
fn find_cycle(deps: &[Vec<u32>]) -> Option<Vec<u32>> {
    let n = deps.len();
    let mut missing: Vec<u32> = deps.iter().map(|d| d.len() as u32).collect();
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependents[j as usize].push(i as u32);
        }
    }
    let mut stack: Vec<u32> = (0..n as u32)
        .filter(|&i| missing[i as usize] == 0)
        .collect();
    let mut seen = 0usize;
    while let Some(i) = stack.pop() {
        seen += 1;
        for &d in &dependents[i as usize] {
            missing[d as usize] -= 1;
            if missing[d as usize] == 0 {
                stack.push(d);
            }
        }
    }
    if seen == n {
        return None;
    }
    // Every task left has a dependency that is also left: follow them until one repeats.
    let start = (0..n).find(|&i| missing[i] > 0)?;
    let mut pos: HashMap<u32, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut cur = start as u32;
    loop {
        if let Some(&p) = pos.get(&cur) {
            // Walked from dependent to dependency; name it the way data flows,
            // starting from where the walk closed.
            let mut cycle: Vec<u32> = path[p..].to_vec();
            cycle.reverse();
            cycle.rotate_right(1);
            cycle.push(cycle[0]);
            return Some(cycle);
        }
        pos.insert(cur, path.len());
        path.push(cur);
        cur = *deps[cur as usize]
            .iter()
            .find(|&&d| missing[d as usize] > 0)
            .expect("a task left by Kahn's algorithm has a dependency left too");
    }
}

/// Post-order depth-first walk from the tasks nothing depends on, visiting a
/// task's inputs in their listed order. Returns each task's position.
fn depth_first_order(inputs: &[Vec<u32>], dependents: &[Vec<u32>]) -> Vec<u32> {
    let n = inputs.len();
    let mut order = vec![u32::MAX; n];
    let mut next = 0u32;
    let mut stack: Vec<(u32, usize)> = Vec::new();
    let sinks = (0..n as u32).filter(|&i| dependents[i as usize].is_empty());
    for sink in sinks {
        stack.push((sink, 0));
        while let Some((t, child)) = stack.pop() {
            if order[t as usize] != u32::MAX {
                continue;
            }
            let ins = &inputs[t as usize];
            let mut c = child;
            while c < ins.len() && order[ins[c] as usize] != u32::MAX {
                c += 1;
            }
            if c < ins.len() {
                stack.push((t, c + 1));
                stack.push((ins[c], 0));
            } else {
                order[t as usize] = next;
                next += 1;
            }
        }
    }
    order
}

/// The name a task shares with its siblings, by which time and progress
/// are summed (Dask's task prefix): `s3.1` (task 1 of a SQL query's stage 3)
/// is `s3`; a Python key, as its `repr`, loses its tuple's indices, its
/// quotes and the token after the name: `('inc-5f3a9c', 4)` and
/// `'inc-5f3a9c'` are `inc`, `('read-parquet-0a1b2c3d', 0)` is
/// `read-parquet`; a bare 32-digit token is `data`.
pub fn key_prefix(key: &str) -> &str {
    let mut name = key.trim();
    if let Some(inner) = name.strip_prefix('(') {
        name = inner.split([',', ')']).next().unwrap_or(inner).trim();
    }
    let name = name.trim_matches(|c| c == '\'' || c == '"');
    if let Some((stage, task)) = name.rsplit_once('.')
        && !stage.is_empty()
        && !task.is_empty()
        && task.bytes().all(|b| b.is_ascii_digit())
    {
        return stage;
    }
    let hex = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_hexdigit());
    let mut end = 0;
    for (i, word) in name.split('-').enumerate() {
        // The first word, then words of letters that are not a hex token.
        let taken = !word.is_empty()
            && (i == 0
                || word.bytes().all(|b| b.is_ascii_alphabetic())
                    && !(word.len() == 8 && hex(word)));
        if !taken {
            break;
        }
        end += word.len() + usize::from(i > 0);
    }
    let prefix = &name[..end];
    if prefix.len() == 32 && hex(prefix) {
        return "data";
    }
    if prefix.is_empty() { name } else { prefix }
}

/// The name a SQL query's graph goes by in logs and the dashboard: its
/// first line that is not a comment, at most 80 characters.
pub fn query_name(sql: &str) -> String {
    let line = sql
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("sql");
    line.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn task_prefixes_drop_indices_tokens_and_quotes() {
        for (key, prefix) in [
            ("s3.1", "s3"),
            ("s12.0", "s12"),
            ("('inc-5f3a9c1d2e', 4)", "inc"),
            ("'inc-5f3a9c1d2e'", "inc"),
            ("('read-parquet-0a1b2c3d', 0, 1)", "read-parquet"),
            ("('getitem-a1b2c3d4e5f6', 2)", "getitem"),
            ("\"sum-aggregate-9f9f9f9f\"", "sum-aggregate"),
            ("5f3a9c1d2e5f3a9c1d2e5f3a9c1d2e00", "data"),
            ("x", "x"),
            ("total", "total"),
            ("-", "-"),
            ("", ""),
        ] {
            assert_eq!(key_prefix(key), prefix, "{key}");
        }
    }

    fn known(_: &str) -> bool {
        true
    }
    fn names() -> String {
        "any".into()
    }
    fn check(tasks: Vec<TaskSpec>) -> Result<ValidGraph, GraphError> {
        validate(tasks, &[], known, names)
    }

    #[test]
    fn diamond_resolves_edges_and_outputs() {
        let g = check(vec![
            TaskSpec::new("a", "k"),
            TaskSpec::new("b", "k").deps(["a"]),
            TaskSpec::new("c", "k").deps(["a"]),
            TaskSpec::new("d", "k").deps(["b", "c", "b"]),
        ])
        .unwrap();
        assert_eq!(g.inputs[3], vec![1, 2, 1]);
        assert_eq!(g.deps[3], vec![1, 2]);
        assert_eq!(g.dependents[0], vec![1, 2]);
        assert_eq!(g.outputs, vec![3]);
        assert!(g.order[0] < g.order[1] && g.order[1] < g.order[2] && g.order[2] < g.order[3]);
    }

    #[test]
    fn cycle_is_named_by_its_keys() {
        let e = check(vec![
            TaskSpec::new("x", "k"),
            TaskSpec::new("a", "k").deps(["c", "x"]),
            TaskSpec::new("b", "k").deps(["a"]),
            TaskSpec::new("c", "k").deps(["b"]),
        ])
        .unwrap_err();
        let GraphError::Cycle { path } = &e else {
            panic!("expected a cycle, got {e}")
        };
        assert_eq!(path.first(), path.last());
        assert_eq!(path.len(), 4);
        assert!(
            e.to_string().contains("a -> b -> c -> a")
                || e.to_string().contains("b -> c -> a -> b")
                || e.to_string().contains("c -> a -> b -> c"),
            "{e}"
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let e = check(vec![TaskSpec::new("a", "k").deps(["a"])]).unwrap_err();
        assert_eq!(e.to_string(), "the graph has a cycle: a -> a");
    }

    #[test]
    fn missing_dependency_names_both_keys() {
        let e = check(vec![TaskSpec::new("a", "k").deps(["ghost"])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task \"a\" depends on \"ghost\", which is not in the graph"
        );
    }

    #[test]
    fn duplicate_keys_and_empty_graphs_are_rejected() {
        let e = check(vec![TaskSpec::new("a", "k"), TaskSpec::new("a", "k")]).unwrap_err();
        assert_eq!(e, GraphError::DuplicateKey { key: "a".into() });
        assert_eq!(check(vec![]).unwrap_err(), GraphError::Empty);
    }

    #[test]
    fn unknown_kind_and_output_are_rejected() {
        let e = validate(
            vec![TaskSpec::new("a", "nope")],
            &[],
            |k| k == "literal",
            || "literal".into(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown kind \"nope\""), "{e}");
        let e = validate(vec![TaskSpec::new("a", "k")], &["b".into()], known, names).unwrap_err();
        assert_eq!(e, GraphError::UnknownOutput { key: "b".into() });
    }

    proptest! {
        #[test]
        fn order_is_topological(edges in proptest::collection::vec((0u32..40, 0u32..40), 0..120)) {
            let n = 40;
            let mut tasks: Vec<TaskSpec> = (0..n).map(|i| TaskSpec::new(format!("t{i}"), "k")).collect();
            for (a, b) in edges {
                let (lo, hi) = (a.min(b), a.max(b));
                if lo != hi {
                    tasks[hi as usize].deps.push(format!("t{lo}"));
                }
            }
            let g = check(tasks).unwrap();
            let mut seen: Vec<u32> = g.order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
            for (i, ds) in g.deps.iter().enumerate() {
                for &d in ds {
                    prop_assert!(g.order[d as usize] < g.order[i]);
                }
            }
        }

        #[test]
        fn back_edge_always_reports_a_real_cycle(len in 2usize..30) {
            let mut tasks: Vec<TaskSpec> = (0..len).map(|i| TaskSpec::new(format!("t{i}"), "k")).collect();
            for (i, t) in tasks.iter_mut().enumerate().skip(1) {
                t.deps.push(format!("t{}", i - 1));
            }
            tasks[0].deps.push(format!("t{}", len - 1));
            let e = check(tasks).unwrap_err();
            let GraphError::Cycle { path } = e else { panic!("no cycle") };
            prop_assert_eq!(path.len(), len + 1);
        }
    }
}
