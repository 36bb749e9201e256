//! The daskrs scheduler: the task-graph state machine (`state`), the gRPC
//! services for clients and workers (`service`), and the HTTP endpoints for
//! metrics, health and the operator's JSON API (`http`).
//!
//! The state machine is synchronous and does no I/O; the services decode,
//! call it under one lock, and send what it put in its outbox.

pub mod state;
