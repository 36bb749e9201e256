//! One tokio runtime for the process, and the wait that keeps Python
//! responsive: the GIL is released while a call is on the network, and
//! Ctrl-C is noticed within a tenth of a second, which drops the call (for
//! a graph: closes its stream, so the scheduler cancels it).

use std::future::Future;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("daskrs-client")
        .enable_all()
        .build()
        .map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "cannot start the client's I/O threads: {e}"
            ))
        })?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `fut` on the runtime and waits for it without the GIL. A signal
/// handler that raises (KeyboardInterrupt) aborts the future.
pub fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let task = runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let mut rx = Some(rx);
    loop {
        // The receiver goes into the GIL-free closure and comes back out.
        let (back, got) = py.detach(move || {
            let r = rx.take().expect("the receiver is put back after each wait");
            let got = r.recv_timeout(Duration::from_millis(100));
            (r, got)
        });
        rx = Some(back);
        match got {
            Ok(out) => return Ok(out),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "the client's I/O task ended without an answer",
                ));
            }
        }
    }
}
