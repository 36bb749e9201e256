//! `daskrs._native`: the daskrs client library for Python. It does the I/O
//! (connect, run graphs, gather, SQL) and holds no API of its own: the
//! Python package (`python/daskrs`) is what users import.
//!
//! It must not link the scheduler, the worker or DataFusion, and never
//! holds the GIL while it waits on the network.

mod client;
mod errors;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::NativeClient>()?;
    m.add_class::<client::NativeSession>()?;
    m.add_class::<client::PlannedSql>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
