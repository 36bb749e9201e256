//! The one place client errors become Python exceptions. The classes live
//! in `daskrs/errors.py`, so users catch them by their Python names.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Raises the `daskrs.errors` class that matches `e`.
pub fn to_py(py: Python<'_>, e: daskrs_client::Error) -> PyErr {
    match build(py, e) {
        Ok(err) => err,
        Err(err) => err,
    }
}

fn build(py: Python<'_>, e: daskrs_client::Error) -> PyResult<PyErr> {
    let errors = py.import("daskrs.errors")?;
    let message = e.to_string();
    let (class, extra) = match e {
        daskrs_client::Error::Connect(_) => ("ConnectError", None),
        daskrs_client::Error::Refused(_) => ("AuthenticationError", None),
        daskrs_client::Error::Rejected(_) => ("Rejected", None),
        daskrs_client::Error::Lost(_) => ("SchedulerLost", None),
        daskrs_client::Error::Gather { key, .. } => {
            let d = PyDict::new(py);
            d.set_item("key", key)?;
            ("GatherError", Some(d))
        }
        daskrs_client::Error::Failed(f) => {
            let daskrs_client::TaskFailure {
                key,
                worker,
                error,
                exception,
                lost_outputs,
            } = *f;
            let d = PyDict::new(py);
            d.set_item("key", key)?;
            d.set_item("worker", worker)?;
            d.set_item("error", error)?;
            d.set_item("lost_outputs", lost_outputs)?;
            d.set_item("exception", pyo3::types::PyBytes::new(py, &exception))?;
            ("TaskFailed", Some(d))
        }
        daskrs_client::Error::Status(s) if s.code() == tonic::Code::FailedPrecondition => {
            ("NoWorkers", None)
        }
        daskrs_client::Error::Status(_) => ("DaskrsError", None),
    };
    let exc = errors.getattr(class)?.call((message,), extra.as_ref())?;
    Ok(PyErr::from_value(exc))
}
