//! The daskrs wire contract: generated gRPC types and services, conversions
//! into `daskrs-core` types, and the one place where channels and servers get
//! their limits. No scheduling or execution logic lives here.

pub mod chunks;
pub mod net;
pub mod pieces;

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("daskrs.v1");
}

pub use generated::*;

use daskrs_core::TaskSpec as CoreTaskSpec;

impl From<TaskSpec> for CoreTaskSpec {
    fn from(t: TaskSpec) -> Self {
        CoreTaskSpec {
            key: t.key,
            kind: t.kind,
            payload: t.payload,
            deps: t.deps,
            parts: t.parts.into_iter().map(|p| u32::try_from(p).ok()).collect(),
            priority: t.priority,
            retries: t.retries,
        }
    }
}

impl From<CoreTaskSpec> for TaskSpec {
    fn from(t: CoreTaskSpec) -> Self {
        TaskSpec {
            key: t.key,
            kind: t.kind,
            payload: t.payload,
            deps: t.deps,
            parts: t
                .parts
                .into_iter()
                .map(|p| p.map_or(-1, i64::from))
                .collect(),
            priority: t.priority,
            retries: t.retries,
        }
    }
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Arrow => "arrow",
            DataFormat::Opaque => "opaque",
            DataFormat::Pieces => "pieces",
            DataFormat::Unspecified => "unspecified",
        }
    }
}

/// Wraps messages into one worker batch.
pub fn worker_batch(messages: Vec<worker_message::Msg>) -> WorkerBatch {
    WorkerBatch {
        messages: messages
            .into_iter()
            .map(|m| WorkerMessage { msg: Some(m) })
            .collect(),
    }
}

/// Wraps messages into one scheduler batch.
pub fn scheduler_batch(messages: Vec<scheduler_message::Msg>) -> SchedulerBatch {
    SchedulerBatch {
        messages: messages
            .into_iter()
            .map(|m| SchedulerMessage { msg: Some(m) })
            .collect(),
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
            .retries(3)
            .priority(-2);
        let wire: TaskSpec = core.clone().into();
        let bytes = wire.encode_to_vec();
        let back: CoreTaskSpec = TaskSpec::decode(&bytes[..]).unwrap().into();
        assert_eq!(back, core);
    }
}
