//! Domain types shared by every daskrs component: task specs, graphs and their
//! validation, task states, the built-in task kinds' arguments, byte sizes; with
//! the `certs` feature, a cluster's TLS certificates.
//!
//! This crate does no I/O and links neither tonic nor kube: it is what the
//! scheduler's state machine, the workers and the client agree on. It must
//! not depend on any other daskrs crate, on tonic, kube or DataFusion.

pub mod bytesize;
#[cfg(feature = "certs")]
pub mod certs;
pub mod clock;
#[doc(hidden)]
pub mod fuzz;
pub mod graph;
pub mod json;
pub mod kinds;
pub mod state;
pub mod task;

pub use bytesize::ByteSize;
pub use graph::{GraphError, TaskSpec, ValidGraph, key_prefix, validate};
pub use state::TaskState;
pub use task::{Assignment, DataFormat, Input, Location, Priority};

/// An error and its sources, each said once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        source = inner.source();
    }
    s
}

/// The message a panic was raised with, when it was given one (as
/// `panic!` with a literal or a format does).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

/// Cluster tokens are at most this long: they travel in every request's headers.
pub const MAX_TOKEN_BYTES: usize = 512;

/// Whether `text` (already trimmed) is a usable cluster token: up to
/// [`MAX_TOKEN_BYTES`] letters, digits and `. _ ~ -`, characters that travel
/// unchanged in headers, cookies and URLs.
pub fn is_token(text: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._~-".contains(&b);
    !text.is_empty() && text.len() <= MAX_TOKEN_BYTES && text.bytes().all(plain)
}
