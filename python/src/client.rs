//! The client as Python sees it: calls that block without the GIL and
//! answer with plain Python values (dicts, lists, bytes).

use std::sync::Arc;

use bytes::Bytes;
use daskrs_client::session::{Event, Session};
use daskrs_client::{Client, Graph};
use daskrs_core::TaskSpec;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::to_py;
use crate::runtime::wait;

#[pyclass(module = "daskrs._native", frozen)]
pub struct NativeClient {
    client: Client,
}

/// One task as the Python side hands it over:
/// `(key, kind, payload, deps, priority, retries)`.
#[derive(FromPyObject)]
pub struct PyTask(String, String, PyBackedBytes, Vec<String>, i32, u32);

#[pymethods]
impl NativeClient {
    /// Connects to the scheduler at `address` (host:port); calls carry
    /// `token`, the cluster's token, when given, over TLS with the
    /// certificates of `tls_dir` when given.
    #[staticmethod]
    #[pyo3(signature = (address, token=None, tls_dir=None))]
    fn connect(
        py: Python<'_>,
        address: String,
        token: Option<String>,
        tls_dir: Option<std::path::PathBuf>,
    ) -> PyResult<NativeClient> {
        let invalid = |e: String| pyo3::exceptions::PyValueError::new_err(e);
        let token = token
            .map(|t| daskrs_proto::auth::Token::parse(&t, "token="))
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        let tls = tls_dir
            .map(|d| daskrs_proto::tls::Tls::load(&d))
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        let client = wait(py, async move {
            Client::connect_with(&address, token.as_ref(), tls.as_ref()).await
        })?
        .map_err(|e| to_py(py, e))?;
        Ok(NativeClient { client })
    }

    #[getter]
    fn address(&self) -> &str {
        self.client.address()
    }

    /// The scheduler's view of the cluster.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client.clone();
        let info = wait(py, async move { client.info().await })?.map_err(|e| to_py(py, e))?;
        let d = PyDict::new(py);
        d.set_item("scheduler_version", info.scheduler_version)?;
        d.set_item("graphs", info.graphs)?;
        let workers = PyList::empty(py);
        for w in info.workers {
            let wd = PyDict::new(py);
            wd.set_item("id", w.id)?;
            wd.set_item("name", w.name)?;
            wd.set_item("address", w.address)?;
            wd.set_item("nthreads", w.nthreads)?;
            wd.set_item("memory_limit", w.memory_limit)?;
            wd.set_item("memory_bytes", w.memory_bytes)?;
            wd.set_item("spilled_bytes", w.spilled_bytes)?;
            wd.set_item("processing", w.processing)?;
            wd.set_item("held_results", w.held_results)?;
            wd.set_item("status", w.status)?;
            wd.set_item("executed", w.executed)?;
            wd.set_item("kinds", w.kinds)?;
            wd.set_item("python", w.python)?;
            workers.append(wd)?;
        }
        d.set_item("workers", workers)?;
        let tasks = PyDict::new(py);
        for c in info.tasks {
            tasks.set_item(c.state, c.count)?;
        }
        d.set_item("tasks", tasks)?;
        let waits = PyDict::new(py);
        for k in info.no_worker {
            waits.set_item(k.kind, k.tasks)?;
        }
        d.set_item("no_worker", waits)?;
        Ok(d)
    }

    /// Waits until at least `n` workers are registered, at most `timeout`
    /// seconds.
    fn wait_for_workers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<()> {
        let client = self.client.clone();
        let timeout = std::time::Duration::try_from_secs_f64(timeout).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "timeout must be a non-negative number of seconds, not {timeout}"
            ))
        })?;
        wait(py, async move { client.wait_for_workers(n, timeout).await })?
            .map_err(|e| to_py(py, e))
    }

    /// Plans SQL whose answer is one key; `tables` are `(name, key,
    /// schema)`: results the session holds that the query may name, each
    /// with its schema as an Arrow IPC stream.
    fn plan_sql(
        &self,
        py: Python<'_>,
        sql: String,
        tables: Vec<(String, String, Vec<u8>)>,
    ) -> PyResult<PlannedSql> {
        let client = self.client.clone();
        let tables = tables
            .into_iter()
            .map(|(name, key, schema)| daskrs_client::sql::SqlTable { name, key, schema })
            .collect();
        let plan = wait(
            py,
            async move { client.plan_sql_with(&sql, tables, true).await },
        )?
        .map_err(|e| to_py(py, e))?;
        Ok(match plan {
            daskrs_client::sql::Plan::Local(bytes) => PlannedSql {
                local: Some(bytes),
                graph: std::sync::Mutex::new(None),
            },
            daskrs_client::sql::Plan::Query { graph, explain, .. } => PlannedSql {
                local: None,
                graph: std::sync::Mutex::new(Some((graph, explain))),
            },
        })
    }

    /// Opens a session: the graph the client's futures live in.
    fn session(&self, py: Python<'_>, name: String) -> PyResult<NativeSession> {
        let client = self.client.clone();
        let session =
            wait(py, async move { client.session(&name).await })?.map_err(|e| to_py(py, e))?;
        Ok(NativeSession {
            session: Arc::new(session),
        })
    }
}

fn graph(name: String, tasks: Vec<PyTask>, outputs: Vec<String>) -> Graph {
    Graph {
        name,
        tasks: tasks
            .into_iter()
            .map(|PyTask(key, kind, payload, deps, priority, retries)| {
                TaskSpec::new(key, kind)
                    .payload(Bytes::from_owner(payload))
                    .deps(deps)
                    .priority(priority)
                    .retries(retries)
            })
            .collect(),
        outputs,
    }
}

/// Planned SQL: the answer of a statement the scheduler ran itself
/// (`local`, an Arrow IPC stream), or a query to submit into a session.
#[pyclass(module = "daskrs._native", frozen)]
pub struct PlannedSql {
    local: Option<Bytes>,
    /// The query's graph and its `--explain`, until submitted.
    graph: std::sync::Mutex<Option<(Graph, String)>>,
}

#[pymethods]
impl PlannedSql {
    #[getter]
    fn local<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.local.as_ref().map(|b| PyBytes::new(py, b))
    }
}

/// A session: submissions that do not wait, keys reported as they finish,
/// results held until released. Closing it releases everything.
#[pyclass(module = "daskrs._native", frozen)]
pub struct NativeSession {
    session: Arc<Session>,
}

/// One event as Python sees it: `("done", key, format, nbytes)`,
/// `("erred", key, failed_key, worker, error, exception)` or
/// `("rejected", outputs, error)`.
type PyEvent<'py> = Bound<'py, pyo3::types::PyTuple>;

#[pymethods]
impl NativeSession {
    #[getter]
    fn graph_id(&self) -> u64 {
        self.session.graph_id
    }

    /// Queues tasks without waiting; their outputs are reported as events.
    fn submit(&self, py: Python<'_>, tasks: Vec<PyTask>, outputs: Vec<String>) -> PyResult<()> {
        self.session
            .submit(graph(String::new(), tasks, outputs))
            .map_err(|e| to_py(py, e))
    }

    /// Queues a planned query; its answer becomes the key `answer`.
    fn submit_query(&self, py: Python<'_>, planned: &PlannedSql, answer: &str) -> PyResult<()> {
        let (graph, explain) = planned
            .graph
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(
                    "this planned SQL was submitted already, or has no query to submit",
                )
            })?;
        self.session
            .submit_query(graph, answer, &explain)
            .map_err(|e| to_py(py, e))
    }

    /// The client no longer wants these keys.
    fn release(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<()> {
        self.session.release(keys).map_err(|e| to_py(py, e))
    }

    /// The next events, waiting at most `timeout` seconds (an empty list
    /// when none came).
    fn events<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Vec<PyEvent<'py>>> {
        let session = self.session.clone();
        let timeout = std::time::Duration::try_from_secs_f64(timeout.max(0.0))
            .unwrap_or(std::time::Duration::from_secs(3600));
        let got = wait(py, async move {
            tokio::time::timeout(timeout, session.events()).await
        })?;
        let events = match got {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(r) => r.map_err(|e| to_py(py, e))?,
        };
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            match ev {
                Event::Done(outputs) => {
                    for o in outputs {
                        let format = daskrs_proto::convert::data_format(o.format)
                            .map_or("unknown", |f| f.name());
                        out.push(("done", o.key, format, o.nbytes).into_pyobject(py)?);
                    }
                }
                Event::Erred { key, failure } => out.push(
                    (
                        "erred",
                        key,
                        failure.key,
                        failure.worker,
                        failure.error,
                        PyBytes::new(py, &failure.exception),
                    )
                        .into_pyobject(py)?,
                ),
                Event::Rejected { outputs, error } => {
                    out.push(("rejected", outputs, error).into_pyobject(py)?)
                }
            }
        }
        Ok(out)
    }

    /// Computed keys' results, in order.
    fn gather_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<String>,
    ) -> PyResult<Vec<(&'static str, Bound<'py, PyBytes>)>> {
        let session = self.session.clone();
        let got =
            wait(py, async move { session.gather_many(keys).await })?.map_err(|e| to_py(py, e))?;
        Ok(got
            .into_iter()
            .map(|out| (out.format.name(), PyBytes::new(py, &out.bytes)))
            .collect())
    }
}
