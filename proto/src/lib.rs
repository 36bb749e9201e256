//! The daskrs wire contract: generated gRPC types and services, conversions
//! into `daskrs-core` types, and the one place where channels and servers get
//! their limits. No scheduling or execution logic lives here, and nothing
//! but `daskrs-core` of daskrs: no scheduler, worker or engine code.

pub mod auth;
pub mod chunks;
pub mod convert;
pub mod net;
pub mod pieces;
pub mod tls;

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("daskrs.v1");
}

pub use generated::*;

/// Wraps messages into one worker batch.
pub fn worker_batch(messages: Vec<worker_message::Msg>) -> WorkerBatch {
    WorkerBatch {
        messages: messages
            .into_iter()
            .map(|m| WorkerMessage { msg: Some(m) })
            .collect(),
        clock: daskrs_core::clock::now(),
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
