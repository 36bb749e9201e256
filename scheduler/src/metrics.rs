//! The scheduler's Prometheus metrics, refreshed from the state at each scrape.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use daskrs_core::TaskState;

use crate::state::{State, WorkerStatus};

pub struct Metrics {
    registry: Registry,
    tasks: IntGaugeVec,
    workers: IntGaugeVec,
    graphs: IntGauge,
    bytes_held: IntGauge,
    desired_workers: IntGauge,
    tasks_finished: IntCounter,
    tasks_erred: IntCounter,
    transfer_bytes: IntCounter,
    workers_lost: IntCounter,
    tasks_recomputed: IntCounter,
    steals: IntCounter,
    pub task_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("daskrs_scheduler".into()), None)
            .expect("static prefix is valid");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        }
        let counter = |n: &str, h: &str| reg(&registry, IntCounter::new(n, h).expect("valid name"));
        let gauge = |n: &str, h: &str| reg(&registry, IntGauge::new(n, h).expect("valid name"));
        Metrics {
            tasks: reg(
                &registry,
                IntGaugeVec::new(Opts::new("tasks", "Tasks by state"), &["state"]).expect("valid"),
            ),
            workers: reg(
                &registry,
                IntGaugeVec::new(Opts::new("workers", "Workers by status"), &["status"])
                    .expect("valid"),
            ),
            graphs: gauge("graphs", "Graphs submitted and not yet released"),
            bytes_held: gauge("bytes_held", "Bytes of results held on workers"),
            desired_workers: gauge("desired_workers", "Workers the current work would want"),
            tasks_finished: counter("tasks_finished_total", "Task runs that produced a result"),
            tasks_erred: counter("tasks_erred_total", "Tasks that failed for good"),
            transfer_bytes: counter(
                "transfer_bytes_total",
                "Bytes moved between workers for task inputs",
            ),
            workers_lost: counter("workers_lost_total", "Workers removed without retiring"),
            tasks_recomputed: counter(
                "tasks_recomputed_total",
                "Results computed again after being lost",
            ),
            steals: counter(
                "steals_total",
                "Tasks moved from a busy worker to an idle one",
            ),
            task_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("task_duration_seconds", "Run time of finished tasks")
                        .buckets(prometheus::exponential_buckets(1e-5, 4.0, 12).expect("valid")),
                )
                .expect("valid"),
            ),
            registry,
        }
    }

    /// Brings every figure up to date with the state, then renders the text format.
    pub fn render(&self, state: &State) -> String {
        for s in TaskState::ALL {
            if s != TaskState::Forgotten {
                self.tasks
                    .with_label_values(&[s.as_str()])
                    .set(state.count(s) as i64);
            }
        }
        for status in [
            WorkerStatus::Running,
            WorkerStatus::Paused,
            WorkerStatus::Retiring,
        ] {
            let n = state
                .workers
                .values()
                .filter(|w| w.status == status)
                .count();
            self.workers
                .with_label_values(&[status.as_str()])
                .set(n as i64);
        }
        self.graphs.set(state.graphs.len() as i64);
        self.bytes_held.set(state.bytes_held() as i64);
        self.desired_workers
            .set(state.desired_workers(crate::ADAPTIVE_TARGET_SECONDS) as i64);
        let t = &state.totals;
        let catch_up = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        catch_up(&self.tasks_finished, t.tasks_finished);
        catch_up(&self.tasks_erred, t.tasks_erred);
        catch_up(&self.transfer_bytes, t.transfer_bytes);
        catch_up(&self.workers_lost, t.workers_lost);
        catch_up(&self.tasks_recomputed, t.tasks_recomputed);
        catch_up(&self.steals, t.steals);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("Prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
