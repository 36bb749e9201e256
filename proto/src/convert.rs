//! Wire types to `daskrs-core` types and back. Encodings that exist only on
//! the wire (enum numbers, the -1 that stands for "the whole result" in a
//! repeated field) are decoded here and nowhere else.

use daskrs_core::{Assignment, DataFormat, Input, Location, Priority, TaskSpec as CoreTaskSpec};

use crate::generated as wire;

/// A message field that no daskrs peer would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {field}: {problem}")]
pub struct DecodeError {
    pub field: &'static str,
    pub problem: String,
}

impl From<DataFormat> for wire::DataFormat {
    fn from(f: DataFormat) -> Self {
        match f {
            DataFormat::Arrow => wire::DataFormat::Arrow,
            DataFormat::Opaque => wire::DataFormat::Opaque,
            DataFormat::Pieces => wire::DataFormat::Pieces,
            DataFormat::Pickle => wire::DataFormat::Pickle,
        }
    }
}

/// The data format a message carries as its enum number.
pub fn data_format(n: i32) -> Result<DataFormat, DecodeError> {
    match wire::DataFormat::try_from(n) {
        Ok(wire::DataFormat::Arrow) => Ok(DataFormat::Arrow),
        Ok(wire::DataFormat::Opaque) => Ok(DataFormat::Opaque),
        Ok(wire::DataFormat::Pieces) => Ok(DataFormat::Pieces),
        Ok(wire::DataFormat::Pickle) => Ok(DataFormat::Pickle),
        Ok(wire::DataFormat::Unspecified) | Err(_) => Err(DecodeError {
            field: "data format",
            problem: format!("{n} is not a known format"),
        }),
    }
}

/// The number a data format is sent as.
pub fn format_number(f: DataFormat) -> i32 {
    wire::DataFormat::from(f) as i32
}

/// A piece on the wire: -1 takes the whole result.
fn encode_piece(p: Option<u32>) -> i64 {
    p.map_or(-1, i64::from)
}

fn decode_piece(field: &'static str, p: i64) -> Result<Option<u32>, DecodeError> {
    if p == -1 {
        return Ok(None);
    }
    u32::try_from(p).map(Some).map_err(|_| DecodeError {
        field,
        problem: format!("{p} is neither a piece number nor -1"),
    })
}

impl TryFrom<wire::TaskSpec> for CoreTaskSpec {
    type Error = DecodeError;

    fn try_from(t: wire::TaskSpec) -> Result<Self, DecodeError> {
        let parts = t
            .parts
            .into_iter()
            .map(|p| decode_piece("task parts", p))
            .collect::<Result<_, _>>()?;
        Ok(CoreTaskSpec {
            key: t.key,
            kind: t.kind,
            payload: t.payload,
            deps: t.deps,
            parts,
            priority: t.priority,
            retries: t.retries,
        })
    }
}

impl From<CoreTaskSpec> for wire::TaskSpec {
    fn from(t: CoreTaskSpec) -> Self {
        wire::TaskSpec {
            key: t.key,
            kind: t.kind,
            payload: t.payload,
            deps: t.deps,
            parts: t.parts.into_iter().map(encode_piece).collect(),
            priority: t.priority,
            retries: t.retries,
        }
    }
}

impl From<Priority> for wire::TaskPriority {
    fn from(p: Priority) -> Self {
        wire::TaskPriority {
            user: p.user,
            graph: p.graph,
            order: p.order,
        }
    }
}

impl From<wire::TaskPriority> for Priority {
    fn from(p: wire::TaskPriority) -> Self {
        Priority {
            user: p.user,
            graph: p.graph,
            order: p.order,
        }
    }
}

impl From<Assignment> for wire::ComputeTask {
    fn from(a: Assignment) -> Self {
        // Whole results everywhere are sent as no pieces at all.
        let input_parts = if a.inputs.iter().all(|i| i.piece.is_none()) {
            Vec::new()
        } else {
            a.inputs.iter().map(|i| encode_piece(i.piece)).collect()
        };
        wire::ComputeTask {
            task_id: a.task,
            key: a.key.to_string(),
            kind: a.kind.to_string(),
            payload: a.payload,
            inputs: a.inputs.iter().map(|i| i.task).collect(),
            input_parts,
            locations: a
                .locations
                .into_iter()
                .map(|l| wire::InputLocation {
                    task_id: l.task,
                    addresses: l.addresses,
                    nbytes: l.nbytes,
                })
                .collect(),
            priority: Some(a.priority.into()),
        }
    }
}

impl TryFrom<wire::ComputeTask> for Assignment {
    type Error = DecodeError;

    fn try_from(c: wire::ComputeTask) -> Result<Self, DecodeError> {
        if !c.input_parts.is_empty() && c.input_parts.len() != c.inputs.len() {
            return Err(DecodeError {
                field: "compute input_parts",
                problem: format!(
                    "{} pieces for {} inputs of task {:?}",
                    c.input_parts.len(),
                    c.inputs.len(),
                    c.key
                ),
            });
        }
        let mut inputs = Vec::with_capacity(c.inputs.len());
        for (i, task) in c.inputs.iter().enumerate() {
            let piece = match c.input_parts.get(i) {
                Some(&p) => decode_piece("compute input_parts", p)?,
                None => None,
            };
            inputs.push(Input { task: *task, piece });
        }
        Ok(Assignment {
            task: c.task_id,
            key: c.key.into(),
            kind: c.kind.into(),
            payload: c.payload,
            inputs,
            locations: c
                .locations
                .into_iter()
                .map(|l| Location {
                    task: l.task_id,
                    addresses: l.addresses,
                    nbytes: l.nbytes,
                })
                .collect(),
            priority: c.priority.map(Priority::from).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn task_spec_round_trips_through_the_wire() {
        let core = CoreTaskSpec::new("b", "sum")
            .deps(["a", "a"])
            .parts(vec![Some(3), None])
            .retries(3)
            .priority(-2);
        let wire: wire::TaskSpec = core.clone().into();
        let bytes = wire.encode_to_vec();
        let back = CoreTaskSpec::try_from(wire::TaskSpec::decode(&bytes[..]).unwrap()).unwrap();
        assert_eq!(back, core);
    }

    #[test]
    fn assignment_round_trips_with_pieces_and_priority() {
        let a = Assignment {
            task: 7,
            key: "join-3".into(),
            kind: "sql.stage".into(),
            payload: bytes::Bytes::from_static(b"plan"),
            inputs: vec![
                Input {
                    task: 1,
                    piece: Some(0),
                },
                Input {
                    task: 2,
                    piece: None,
                },
            ],
            locations: vec![Location {
                task: 2,
                addresses: vec!["10.0.0.1:8788".into()],
                nbytes: 99,
            }],
            priority: Priority::new(5, 3, 11),
        };
        let bytes = wire::ComputeTask::from(a.clone()).encode_to_vec();
        let back = Assignment::try_from(wire::ComputeTask::decode(&bytes[..]).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn whole_results_are_sent_without_pieces() {
        let a = Assignment {
            task: 1,
            key: "x".into(),
            kind: "sum".into(),
            payload: bytes::Bytes::new(),
            inputs: vec![Input {
                task: 4,
                piece: None,
            }],
            locations: vec![],
            priority: Priority::default(),
        };
        let wire = wire::ComputeTask::from(a.clone());
        assert!(wire.input_parts.is_empty());
        assert_eq!(Assignment::try_from(wire).unwrap(), a);
    }

    #[test]
    fn malformed_pieces_and_formats_are_refused_with_the_field() {
        let mut wire = wire::ComputeTask {
            key: "k".into(),
            inputs: vec![1, 2],
            input_parts: vec![-1],
            ..Default::default()
        };
        let e = Assignment::try_from(wire.clone()).unwrap_err();
        assert!(e.to_string().contains("1 pieces for 2 inputs"), "{e}");
        wire.input_parts = vec![-1, -7];
        let e = Assignment::try_from(wire).unwrap_err();
        assert!(e.to_string().contains("-7 is neither"), "{e}");
        let e = data_format(0).unwrap_err();
        assert!(e.to_string().contains("data format"), "{e}");
        assert_eq!(
            data_format(format_number(DataFormat::Pieces)),
            Ok(DataFormat::Pieces)
        );
    }
}
