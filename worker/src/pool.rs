//! The worker's task threads: `nthreads` OS threads taking jobs from one queue.
//!
//! Tasks are handed over ahead of time (see `session::PREFETCH_PER_THREAD`),
//! so a thread that finishes a short task starts the next without waiting
//! for the session to hear about the first.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    static THREAD: Cell<u32> = const { Cell::new(0) };
}

/// The index of the pool thread this runs on, from 0 (0 off the pool).
pub fn thread_index() -> u32 {
    THREAD.with(Cell::get)
}

pub struct Pool {
    tx: Sender<Job>,
}

impl Pool {
    pub fn new(threads: usize, name: &str) -> std::io::Result<Pool> {
        let (tx, rx) = channel::<Job>();
        let rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-task-{i}"))
                .spawn(move || {
                    THREAD.with(|t| t.set(i as u32));
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(p) => p.into_inner().recv(),
                        };
                        match job {
                            // A job that panics costs itself, not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return, // the pool was dropped
                        }
                    }
                })?;
        }
        Ok(Pool { tx })
    }

    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        // Sending fails only once every thread is gone, which dropping the pool causes.
        let _ = self.tx.send(Box::new(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_job_on_its_threads() {
        let pool = Pool::new(2, "t").unwrap();
        let (tx, rx) = channel();
        for i in 0..100 {
            let tx = tx.clone();
            pool.submit(move || {
                let name = std::thread::current().name().unwrap().to_string();
                tx.send((i, name, thread_index())).unwrap();
            });
        }
        let mut got: Vec<(i32, String, u32)> = (0..100).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        // Each thread knows its index, the one in its name.
        for (_, name, index) in &got {
            assert_eq!(*name, format!("t-task-{index}"));
        }
        assert_eq!(thread_index(), 0, "off the pool");
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|g| g.1.starts_with("t-task-")));
    }
}
