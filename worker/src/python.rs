//! The `python` task kind: Python tasks run in executor processes beside the
//! worker, never inside it, so user code that segfaults, calls `os._exit` or
//! exhausts memory costs one executor, not the worker and the results it
//! holds.
//!
//! An executor is `python -m daskrs._executor` from the interpreter the
//! worker was given. Worker and executor speak in messages on the
//! executor's stdin and stdout: a message is a little-endian `u32` count of
//! frames, then each frame as a `u64` length and its bytes.
//!
//! - The executor opens with `hello` and a JSON object of its versions.
//! - Tasks are handed over in a `run` message: the number of tasks (`u32`),
//!   then for each the payload (the pickled task), a string of one format
//!   letter per input (`p` pickle, `a` Arrow, `o` opaque), and the inputs.
//!   Short tasks go several to a message (see [`TaskKind::run_batch`]).
//! - Each task is answered in order by a message of its own: `ok`, the
//!   result's format letter and its bytes; or `err`, the error as text
//!   (type, message, remote traceback) and the exception pickled, or empty
//!   when it cannot be pickled; then the seconds it ran (`f64`).
//!
//! An idle executor serves the next tasks; one that died is replaced. A task
//! cancelled while it runs is stopped by killing its executor. When an
//! executor dies with several tasks of a batch unanswered, those run again
//! one at a time, so that only the task that ends its executor fails.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use daskrs_core::DataFormat;

use crate::TaskError;
use crate::data::Data;
use crate::kinds::{BatchTask, TaskKind};

pub use daskrs_core::kinds::PYTHON as KIND;

/// The message layout worker and executor speak (`PROTOCOL` in
/// `_executor.py`), which the executor's hello names.
const PROTOCOL: u64 = 2;

/// Largest frame an executor may send: a result bigger than this is refused
/// rather than allocated.
const MAX_FRAME: u64 = 16 << 30;

/// The `python` kind and its executors.
pub struct PythonKind {
    python: PathBuf,
    idle: Mutex<Vec<Executor>>,
    /// The executor process of each running task, to stop it on cancel.
    running: Mutex<HashMap<u64, Running>>,
    /// What the first executor said of itself.
    versions: serde_json::Value,
}

impl PythonKind {
    /// Starts one executor to check that `python` runs the daskrs package,
    /// and keeps it for the first task.
    pub fn start(python: PathBuf) -> Result<PythonKind, String> {
        let (executor, versions) = Executor::spawn(&python)?;
        Ok(PythonKind {
            python,
            idle: Mutex::new(vec![executor]),
            running: Mutex::new(HashMap::new()),
            versions,
        })
    }

    /// The executor's versions (Python, daskrs, cloudpickle, dask).
    pub fn versions(&self) -> &serde_json::Value {
        &self.versions
    }

    fn take(&self) -> Result<Executor, TaskError> {
        let idle = self.idle.lock().map(|mut v| v.pop());
        match idle {
            Ok(Some(e)) => Ok(e),
            _ => Executor::spawn(&self.python)
                .map(|(e, _)| e)
                .map_err(TaskError::Failed),
        }
    }

    fn put_back(&self, e: Executor) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(e);
        }
    }
}

impl PythonKind {
    /// Kills the process running `task`, if it still is: under the lock
    /// of running tasks, so a process whose task has just answered (and
    /// may be about to serve another) is never hit. Its run drops it.
    fn kill_running(&self, task: u64, why: Option<String>) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        let Some(r) = running.get_mut(&task) else {
            return;
        };
        r.killed = true;
        if why.is_some() {
            r.stopped = why;
        }
        if let Ok(mut c) = r.child.lock() {
            let _ = c.kill();
        }
    }
}

impl TaskKind for PythonKind {
    fn run(&self, payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError> {
        self.run_task(0, payload, inputs)
    }

    fn cancel(&self, task: u64) {
        // Its run sees the pipe close and reports the task ended.
        self.kill_running(task, None);
    }

    fn largest_running(&self) -> Option<(u64, u64)> {
        let running: Vec<(u64, u32)> = self.running.lock().ok().and_then(|r| {
            // One at a time: a process already stopped keeps its pages
            // until it is gone, and must not cost a second task.
            if r.values().any(|r| r.killed) {
                return None;
            }
            Some(
                r.iter()
                    .filter_map(|(task, r)| r.child.lock().ok().map(|c| (*task, c.id())))
                    .collect(),
            )
        })?;
        // The tasks of a batch share one process: each is read once.
        let mut seen = std::collections::HashSet::new();
        running
            .into_iter()
            .filter(|(_, pid)| seen.insert(*pid))
            .filter_map(|(task, pid)| {
                crate::session::resident_bytes(&pid.to_string()).map(|rss| (task, rss))
            })
            .max_by_key(|(_, rss)| *rss)
    }

    fn stop_for_memory(&self, task: u64, why: String) {
        self.kill_running(task, Some(why));
    }

    fn trim(&self) {
        // Dropped executors are killed; the next task starts a fresh one.
        let idle = self.idle.lock().map(|mut v| std::mem::take(&mut *v));
        drop(idle);
    }

    fn resident_bytes(&self) -> u64 {
        let mut pids: Vec<u32> = Vec::new();
        if let Ok(idle) = self.idle.lock() {
            pids.extend(
                idle.iter()
                    .filter_map(|e| e.child.lock().ok().map(|c| c.id())),
            );
        }
        if let Ok(running) = self.running.lock() {
            pids.extend(
                running
                    .values()
                    .filter_map(|r| r.child.lock().ok().map(|c| c.id())),
            );
        }
        // The tasks of a batch share one process: it counts once.
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .filter_map(|pid| crate::session::resident_bytes(&pid.to_string()))
            .sum()
    }

    fn batches(&self) -> bool {
        true
    }

    fn run_task(&self, task: u64, payload: &[u8], inputs: &[Data]) -> Result<Data, TaskError> {
        let mut out = None;
        let one = [BatchTask {
            task,
            payload,
            inputs,
        }];
        self.run_batch(&one, &mut |_, result, _| out = Some(result));
        out.unwrap_or_else(|| Err(TaskError::Failed("the task was not run".into())))
    }

    fn run_batch(
        &self,
        tasks: &[BatchTask<'_>],
        answer: &mut dyn FnMut(usize, Result<Data, TaskError>, f64),
    ) {
        let mut which = Vec::with_capacity(tasks.len());
        let mut formats = Vec::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            match input_formats(t.inputs) {
                Ok(f) => {
                    which.push(i);
                    formats.push(f);
                }
                Err(e) => answer(i, Err(e), 0.0),
            }
        }
        if which.is_empty() {
            return;
        }
        let (lost, killed) = self.run_on_executor(tasks, &which, &formats, answer);
        // One task unanswered: it ended its executor, or the worker ended
        // it for that task's sake. (Killed for another task, whose answer
        // was on its way, it is not to blame.)
        if let [only] = lost.as_slice()
            && (only.targeted || !killed)
        {
            answer(only.index, Err(TaskError::Failed(only.error.clone())), 0.0);
            return;
        }
        // Several: which of them the executor died of is not known, so each
        // runs again alone (those cancelled meanwhile excepted), and only a
        // task that ends its own executor fails.
        for l in lost {
            if l.cancelled {
                answer(l.index, Err(TaskError::Failed(l.error)), 0.0);
                continue;
            }
            let at = which.iter().position(|&w| w == l.index).unwrap_or(0);
            let (again, _) = self.run_on_executor(tasks, &[l.index], &formats[at..=at], answer);
            for l in again {
                answer(l.index, Err(TaskError::Failed(l.error)), 0.0);
            }
        }
    }
}

/// A task of a batch its executor did not answer: it died first.
struct Lost {
    index: usize,
    /// How the executor ended, and why the worker stopped it if it did.
    error: String,
    /// The worker stopped the executor because this task was cancelled.
    cancelled: bool,
    /// The worker stopped the executor for this task (cancelled, or for memory).
    targeted: bool,
}

/// The running-task entries of a batch, removed however its run ends.
struct Entries<'a> {
    running: &'a Mutex<HashMap<u64, Running>>,
    tasks: Vec<u64>,
}

impl Entries<'_> {
    /// The task's entry, gone now that it is answered or lost: whether it
    /// was killed, and why.
    fn end(&self, task: u64) -> (bool, Option<String>) {
        self.running
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&task))
            .map_or((false, None), |r| (r.killed, r.stopped))
    }
}

impl Drop for Entries<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.running.lock() {
            for t in &self.tasks {
                r.remove(t);
            }
        }
    }
}

impl PythonKind {
    /// Hands the tasks `which` of `tasks` to one executor in one message
    /// and passes on each answer as it comes. Returns the tasks left
    /// unanswered when the executor died, and whether the worker killed it.
    fn run_on_executor(
        &self,
        tasks: &[BatchTask<'_>],
        which: &[usize],
        formats: &[String],
        answer: &mut dyn FnMut(usize, Result<Data, TaskError>, f64),
    ) -> (Vec<Lost>, bool) {
        let mut executor = match self.take() {
            Ok(e) => e,
            Err(e) => {
                let error = e.to_string();
                let lost = which
                    .iter()
                    .map(|&index| Lost {
                        index,
                        error: error.clone(),
                        cancelled: false,
                        targeted: false,
                    })
                    .collect();
                return (lost, false);
            }
        };
        let count = (which.len() as u32).to_le_bytes();
        let mut frames: Vec<&[u8]> = vec![b"run", &count];
        for (&i, f) in which.iter().zip(formats) {
            let t = &tasks[i];
            frames.push(t.payload);
            frames.push(f.as_bytes());
            frames.extend(t.inputs.iter().map(|d| d.bytes.as_ref()));
        }
        if let Ok(mut r) = self.running.lock() {
            for &i in which {
                r.insert(
                    tasks[i].task,
                    Running {
                        child: executor.child.clone(),
                        killed: false,
                        stopped: None,
                    },
                );
            }
        }
        let entries = Entries {
            running: &self.running,
            tasks: which.iter().map(|&i| tasks[i].task).collect(),
        };
        let mut killed_any = false;
        let mut reusable = true;
        let mut sent = executor.send(&frames);
        for (k, &i) in which.iter().enumerate() {
            let received = match sent {
                Ok(()) => executor.receive(),
                Err(e) => Err(e),
            };
            let frames = match received {
                Ok(f) => f,
                Err(io) => {
                    let died = executor.died(&io);
                    let lost = which[k..]
                        .iter()
                        .map(|&index| {
                            let (killed, stopped) = entries.end(tasks[index].task);
                            killed_any |= killed;
                            Lost {
                                index,
                                cancelled: killed && stopped.is_none(),
                                targeted: killed,
                                error: match stopped {
                                    Some(why) => format!("{died}: the worker stopped it, {why}"),
                                    None => died.clone(),
                                },
                            }
                        })
                        .collect();
                    return (lost, killed_any);
                }
            };
            sent = Ok(());
            let (killed, _) = entries.end(tasks[i].task);
            killed_any |= killed;
            // A process killed just as it answered is dropped, not reused.
            reusable &= !killed;
            let (result, seconds) = parse_answer(frames);
            reusable &= !matches!(result, Err(TaskError::Corrupt(_)));
            answer(i, result, seconds);
        }
        if reusable {
            self.put_back(executor);
        }
        (Vec::new(), killed_any)
    }
}

/// The format letter of each input.
fn input_formats(inputs: &[Data]) -> Result<String, TaskError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, d)| match d.format {
            DataFormat::Pickle => Ok('p'),
            DataFormat::Arrow => Ok('a'),
            DataFormat::Opaque => Ok('o'),
            DataFormat::Pieces => Err(TaskError::Corrupt(format!(
                "input {i} is a shuffle's pieces; a Python task takes one piece or a whole result"
            ))),
        })
        .collect()
}

/// A task's answer: its result and the seconds it ran in the executor.
fn parse_answer(mut answer: Vec<Bytes>) -> (Result<Data, TaskError>, f64) {
    let seconds = match answer.get(3).map(|s| <[u8; 8]>::try_from(s.as_ref())) {
        Some(Ok(b)) if answer.len() == 4 => {
            answer.pop();
            f64::from_le_bytes(b)
        }
        _ => {
            return (
                Err(TaskError::Corrupt(
                    "the Python executor sent a malformed answer".into(),
                )),
                0.0,
            );
        }
    };
    let result = match answer.first().map(|f| f.as_ref()) {
        Some(b"ok") => {
            let bytes = answer.pop().unwrap_or_default();
            match answer[1].as_ref() {
                b"p" => Ok(Data {
                    format: DataFormat::Pickle,
                    bytes,
                }),
                b"a" => Ok(Data {
                    format: DataFormat::Arrow,
                    bytes,
                }),
                b"o" => Ok(Data {
                    format: DataFormat::Opaque,
                    bytes,
                }),
                other => Err(TaskError::Corrupt(format!(
                    "the Python executor answered with an unknown format {:?}",
                    String::from_utf8_lossy(other)
                ))),
            }
        }
        Some(b"err") => Err(TaskError::Raised {
            message: String::from_utf8_lossy(&answer[1]).into_owned(),
            exception: answer.pop().unwrap_or_default(),
        }),
        _ => Err(TaskError::Corrupt(
            "the Python executor sent a malformed answer".into(),
        )),
    };
    (result, seconds)
}

struct Running {
    child: Arc<Mutex<Child>>,
    /// Cancelled or stopped: its process is not to serve another task.
    killed: bool,
    /// Why the worker stopped the executor, for the task's error.
    stopped: Option<String>,
}

/// One executor process.
struct Executor {
    child: Arc<Mutex<Child>>,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
}

impl Executor {
    fn spawn(python: &PathBuf) -> Result<(Executor, serde_json::Value), String> {
        let cannot = |e: &dyn std::fmt::Display| {
            format!(
                "cannot start the Python executor `{} -m daskrs._executor`: {e}",
                python.display()
            )
        };
        let mut child = Command::new(python)
            .args(["-m", "daskrs._executor"])
            .env("PYTHONUNBUFFERED", "1")
            // User code has no business with the cluster's secret.
            .env_remove(daskrs_proto::auth::TOKEN_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| cannot(&e))?;
        // Should the machine (or the pod) run out of memory, the kernel
        // ends an executor, not the worker and the results it holds.
        let _ = std::fs::write(format!("/proc/{}/oom_score_adj", child.id()), "1000");
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(cannot(&"its pipes were not opened"));
        };
        let mut e = Executor {
            child: Arc::new(Mutex::new(child)),
            to: BufWriter::new(stdin),
            from: BufReader::new(stdout),
        };
        let hello = match e.receive() {
            Ok(h) => h,
            Err(io) => return Err(cannot(&e.died(&io))),
        };
        match hello.as_slice() {
            [tag, versions] if tag.as_ref() == b"hello" => {
                let versions: serde_json::Value = serde_json::from_slice(versions)
                    .map_err(|err| cannot(&format!("its greeting is not JSON: {err}")))?;
                let protocol = versions
                    .get("executor_protocol")
                    .and_then(|p| p.as_u64())
                    .unwrap_or(1);
                if protocol != PROTOCOL {
                    return Err(cannot(&format!(
                        "its daskrs package ({}) speaks executor protocol {protocol}, this worker \
                         {PROTOCOL}: install this worker's daskrs release ({}) in that Python",
                        versions["daskrs"].as_str().unwrap_or("unknown version"),
                        env!("CARGO_PKG_VERSION"),
                    )));
                }
                Ok((e, versions))
            }
            _ => Err(cannot(&"it did not greet as a daskrs executor")),
        }
    }

    fn send(&mut self, frames: &[&[u8]]) -> std::io::Result<()> {
        self.to.write_all(&(frames.len() as u32).to_le_bytes())?;
        for f in frames {
            self.to.write_all(&(f.len() as u64).to_le_bytes())?;
            self.to.write_all(f)?;
        }
        self.to.flush()
    }

    fn receive(&mut self) -> std::io::Result<Vec<Bytes>> {
        let mut n = [0u8; 4];
        self.from.read_exact(&mut n)?;
        let n = u32::from_le_bytes(n);
        let mut frames = Vec::with_capacity(n.min(16) as usize);
        for _ in 0..n {
            let mut len = [0u8; 8];
            self.from.read_exact(&mut len)?;
            let len = u64::from_le_bytes(len);
            if len > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes is over the limit"),
                ));
            }
            let mut buf = vec![0u8; len as usize];
            self.from.read_exact(&mut buf)?;
            frames.push(Bytes::from(buf));
        }
        Ok(frames)
    }

    /// Why the executor stopped answering, once it has exited.
    fn died(&mut self, io: &std::io::Error) -> String {
        let Ok(mut child) = self.child.lock() else {
            return format!("lost the Python process running the task: {io}");
        };
        if io.kind() == std::io::ErrorKind::InvalidData {
            let _ = child.kill();
            let _ = child.wait();
            return format!("the Python executor sent a bad message: {io}");
        }
        match child.wait() {
            Ok(status) => format!(
                "the Python process running the task {}",
                describe_exit(status)
            ),
            Err(e) => format!("lost the Python process running the task: {io}; {e}"),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // It may be busy in user code: killed, then reaped.
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// "was killed by signal 11 (SIGSEGV)", "exited with status 3".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = match sig {
            1 => "SIGHUP",
            2 => "SIGINT",
            4 => "SIGILL",
            6 => "SIGABRT",
            7 => "SIGBUS",
            8 => "SIGFPE",
            9 => "SIGKILL",
            11 => "SIGSEGV",
            13 => "SIGPIPE",
            15 => "SIGTERM",
            _ => "",
        };
        if name.is_empty() {
            format!("was killed by signal {sig}")
        } else {
            format!("was killed by signal {sig} ({name})")
        }
    } else {
        match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "ended".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executor_of_another_protocol_is_refused_naming_both() {
        // A stand-in for an older daskrs package's executor: it greets
        // without a protocol (the first one) and waits.
        let dir = tempfile::tempdir().unwrap();
        let python = dir.path().join("python");
        let greet = r#"import json, struct, sys
hello = json.dumps({"python": "3.12.1", "daskrs": "0.0.9"}).encode()
out = sys.stdout.buffer
out.write(struct.pack("<I", 2))
for f in (b"hello", hello):
    out.write(struct.pack("<Q", len(f)) + f)
out.flush()
sys.stdin.read()
"#;
        std::fs::write(dir.path().join("greet.py"), greet).unwrap();
        std::fs::write(
            &python,
            format!(
                "#!/bin/sh\nexec python3 {}\n",
                dir.path().join("greet.py").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let Err(e) = PythonKind::start(python) else {
            panic!("an executor of protocol 1 was taken");
        };
        assert!(
            e.contains("0.0.9") && e.contains("protocol 1") && e.contains("this worker 2"),
            "{e}"
        );
    }

    #[test]
    fn exits_are_described_by_signal_name_or_status() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(11)),
            "was killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
    }
}
