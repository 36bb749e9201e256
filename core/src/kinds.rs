//! The built-in task kinds: their names and the JSON arguments each takes.
//!
//! Workers execute them (`daskrs-worker`); clients and the scheduler use the
//! argument types here to reject a bad graph before anything runs.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Arrays of numbers written in the graph itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LiteralArgs {
    pub values: Vec<serde_json::Number>,
}

/// `start, start+step, ..` below `stop`, as 64-bit integers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RangeArgs {
    pub start: i64,
    pub stop: i64,
    #[serde(default = "one")]
    pub step: i64,
}

/// `n` pseudo-random floats in [0, 1), the same for the same seed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RandomArgs {
    pub n: u64,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    pub ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    #[serde(default = "default_failure")]
    pub message: String,
}

/// An opaque result of `bytes` bytes, for moving and holding data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobArgs {
    pub bytes: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

fn one() -> i64 {
    1
}

fn default_failure() -> String {
    "task failed on purpose".to_string()
}

/// Largest array a `range`, `random` or `blob` task may make (1 GiB of values).
pub const MAX_GENERATED: u64 = 1 << 30;

/// How a built-in kind uses its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    None,
    Any,
    AtLeastOne,
}

/// Every built-in kind: name, how many inputs it takes, and a one-line description.
pub const BUILTIN: &[(&str, Inputs, &str)] = &[
    (
        "literal",
        Inputs::None,
        "an array of the numbers in `values`",
    ),
    (
        "range",
        Inputs::None,
        "integers from `start` below `stop` by `step`",
    ),
    ("random", Inputs::None, "`n` floats in [0, 1) from `seed`"),
    ("add", Inputs::AtLeastOne, "element-wise sum of the inputs"),
    (
        "sub",
        Inputs::AtLeastOne,
        "first input minus the others, element-wise",
    ),
    (
        "mul",
        Inputs::AtLeastOne,
        "element-wise product of the inputs",
    ),
    (
        "div",
        Inputs::AtLeastOne,
        "first input divided by the others, element-wise",
    ),
    (
        "sum",
        Inputs::AtLeastOne,
        "sum of every value of the inputs",
    ),
    ("min", Inputs::AtLeastOne, "smallest value of the inputs"),
    ("max", Inputs::AtLeastOne, "largest value of the inputs"),
    (
        "count",
        Inputs::AtLeastOne,
        "number of non-null values of the inputs",
    ),
    (
        "sleep",
        Inputs::Any,
        "waits `ms` milliseconds, returns nothing",
    ),
    ("fail", Inputs::Any, "fails with `message`"),
    ("blob", Inputs::Any, "an opaque result of `bytes` bytes"),
    ("noop", Inputs::Any, "does nothing, returns nothing"),
];

/// Python tasks (a pickled task and its inputs), run by workers started
/// with a Python interpreter.
pub const PYTHON: &str = "python";

/// Kinds that only some workers run. A graph may name them while no worker
/// runs them: its tasks wait until one joins.
pub const OPTIONAL: &[&str] = &[PYTHON];

pub fn is_builtin(kind: &str) -> bool {
    BUILTIN.iter().any(|(name, _, _)| *name == kind)
}

pub fn builtin_names() -> String {
    BUILTIN
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a built-in kind's JSON arguments; an empty payload means `{}`.
pub fn parse_args<T: DeserializeOwned>(kind: &str, payload: &[u8]) -> Result<T, String> {
    let text: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    serde_json::from_slice(text).map_err(|e| format!("invalid arguments for kind {kind:?}: {e}"))
}

/// Checks a built-in task's arguments and input count. Kinds that are not
/// built in are left to the workers that registered them.
pub fn check(kind: &str, payload: &[u8], n_inputs: usize) -> Result<(), String> {
    let Some((_, inputs, _)) = BUILTIN.iter().find(|(n, _, _)| *n == kind) else {
        return Ok(());
    };
    match (inputs, n_inputs) {
        (Inputs::None, n) if n > 0 => {
            return Err(format!("kind {kind:?} takes no inputs, got {n}"));
        }
        (Inputs::AtLeastOne, 0) => return Err(format!("kind {kind:?} needs at least one input")),
        _ => {}
    }
    let limit = |what: &str, n: u64| {
        if n > MAX_GENERATED {
            Err(format!("{what} = {n} is over the limit of {MAX_GENERATED}"))
        } else {
            Ok(())
        }
    };
    match kind {
        "literal" => parse_args::<LiteralArgs>(kind, payload).map(drop),
        "range" => {
            let a: RangeArgs = parse_args(kind, payload)?;
            if a.step == 0 {
                return Err("range: step must not be 0".into());
            }
            let len = (a.stop as i128 - a.start as i128) / a.step as i128;
            limit("range length", len.max(0) as u64)
        }
        "random" => limit("n", parse_args::<RandomArgs>(kind, payload)?.n),
        "sleep" => parse_args::<SleepArgs>(kind, payload).map(drop),
        "fail" => parse_args::<FailArgs>(kind, payload).map(drop),
        "blob" => limit("bytes", parse_args::<BlobArgs>(kind, payload)?.bytes),
        _ => parse_args::<NoArgs>(kind, payload).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_arguments_pass() {
        check("literal", br#"{"values": [1, 2.5]}"#, 0).unwrap();
        check("range", br#"{"start": 0, "stop": 10}"#, 0).unwrap();
        check("sum", b"", 3).unwrap();
        check("my.custom.kind", b"\x00\x01", 7).unwrap();
    }

    #[test]
    fn bad_arguments_name_the_field() {
        let e = check("literal", br#"{"value": [1]}"#, 0).unwrap_err();
        assert!(e.contains("unknown field `value`"), "{e}");
        let e = check("sleep", br#"{"ms": "soon"}"#, 0).unwrap_err();
        assert!(e.contains("sleep") && e.contains("invalid type"), "{e}");
        let e = check("range", br#"{"start": 0, "stop": 3, "step": 0}"#, 0).unwrap_err();
        assert!(e.contains("step"), "{e}");
        let e = check("blob", br#"{"bytes": 1099511627776}"#, 0).unwrap_err();
        assert!(e.contains("over the limit"), "{e}");
    }

    #[test]
    fn input_counts_are_checked() {
        assert!(
            check("sum", b"", 0)
                .unwrap_err()
                .contains("at least one input")
        );
        assert!(
            check("literal", br#"{"values": []}"#, 1)
                .unwrap_err()
                .contains("no inputs")
        );
    }
}
