//! The JSON graph format that `daskrs submit` reads.
//!
//! ```json
//! {
//!   "tasks": [
//!     {"key": "x", "kind": "range", "args": {"start": 0, "stop": 100}},
//!     {"key": "y", "kind": "mul", "deps": ["x", "x"]},
//!     {"key": "total", "kind": "sum", "deps": ["y"], "retries": 2}
//!   ],
//!   "outputs": ["total"]
//! }
//! ```
//!
//! `args` is handed to the task kind as its payload (JSON text); `deps` are
//! the task's inputs in order; `outputs` defaults to every task nothing
//! depends on. Unknown fields are errors, so a typo never passes silently.

use serde::Deserialize;

use crate::graph::{GraphError, TaskSpec};
use crate::kinds;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphFile {
    tasks: Vec<TaskEntry>,
    #[serde(default)]
    outputs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskEntry {
    key: String,
    kind: String,
    #[serde(default)]
    args: Option<serde_json::Value>,
    #[serde(default)]
    deps: Vec<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    retries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("malformed graph JSON at {path}: {message}")]
    Json { path: String, message: String },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// A graph read from JSON: its tasks and the keys the client wants back.
#[derive(Debug, Clone)]
pub struct GraphDoc {
    pub tasks: Vec<TaskSpec>,
    pub outputs: Vec<String>,
}

/// Reads the JSON graph format and checks the built-in kinds' arguments.
/// Structure (cycles, missing keys) is checked by [`crate::validate`].
pub fn parse_graph(text: &[u8]) -> Result<GraphDoc, ParseError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    let file: GraphFile = serde_path_to_error::deserialize(de).map_err(|e| ParseError::Json {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    let mut tasks = Vec::with_capacity(file.tasks.len());
    for t in file.tasks {
        let payload = match &t.args {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::to_vec(v).expect("a JSON value always serialises"),
        };
        kinds::check(&t.kind, &payload, t.deps.len()).map_err(|message| {
            GraphError::InvalidArguments {
                key: t.key.clone(),
                message,
            }
        })?;
        tasks.push(TaskSpec {
            key: t.key,
            kind: t.kind,
            payload: payload.into(),
            deps: t.deps,
            parts: Vec::new(),
            priority: t.priority,
            retries: t.retries,
        });
    }
    Ok(GraphDoc {
        tasks,
        outputs: file.outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example() {
        let g = parse_graph(
            br#"{"tasks": [
                {"key": "x", "kind": "range", "args": {"start": 0, "stop": 100}},
                {"key": "y", "kind": "mul", "deps": ["x", "x"]},
                {"key": "total", "kind": "sum", "deps": ["y"], "retries": 2}
            ], "outputs": ["total"]}"#,
        )
        .unwrap();
        assert_eq!(g.tasks.len(), 3);
        assert_eq!(g.tasks[1].deps, vec!["x", "x"]);
        assert_eq!(g.tasks[2].retries, 2);
        assert_eq!(&g.tasks[0].payload[..], br#"{"start":0,"stop":100}"#);
        assert_eq!(g.outputs, vec!["total"]);
    }

    #[test]
    fn errors_name_the_place() {
        let e =
            parse_graph(br#"{"tasks": [{"key": "a", "kind": "noop"}, {"key": "b", "knd": "x"}]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("tasks[1]"), "{e}");
        assert!(e.to_string().contains("knd"), "{e}");
        let e = parse_graph(br#"{"tasks": [{"key": "a", "kind": "sleep", "args": {"ms": -1}}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("task \"a\""), "{e}");
        let e = parse_graph(b"{\"tasks\": [").unwrap_err();
        assert!(e.to_string().starts_with("malformed graph JSON"), "{e}");
    }
}
