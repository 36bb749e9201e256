//! The worker's Prometheus metrics.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub tasks_executed: IntCounter,
    pub tasks_failed: IntCounter,
    pub task_batches: IntCounter,
    pub transfer_bytes: IntCounter,
    pub peer_calls: IntCounter,
    pub memory_bytes: IntGauge,
    pub spilled_bytes: IntGauge,
    pub held_results: IntGauge,
    pub paused: IntGauge,
    pub connected: IntGauge,
    pub task_duration: Histogram,
}

impl Metrics {
    pub fn new(worker: &str) -> Metrics {
        let registry = Registry::new_custom(
            Some("daskrs_worker".into()),
            Some([("worker".to_string(), worker.to_string())].into()),
        )
        .expect("static metric prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric name is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric name is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let task_duration = Histogram::with_opts(
            HistogramOpts::new(
                "task_duration_seconds",
                "Time spent running tasks, inputs fetched",
            )
            .buckets(prometheus::exponential_buckets(1e-5, 4.0, 12).expect("valid buckets")),
        )
        .expect("static metric name is valid");
        registry
            .register(Box::new(task_duration.clone()))
            .expect("metric registered once");
        Metrics {
            tasks_executed: counter("tasks_executed_total", "Tasks run to a result"),
            tasks_failed: counter("tasks_failed_total", "Task runs that failed"),
            task_batches: counter(
                "task_batches_total",
                "Jobs of several short tasks handed to a thread (and its executor) at once",
            ),
            transfer_bytes: counter("transfer_bytes_total", "Bytes fetched from peer workers"),
            peer_calls: counter(
                "peer_calls_total",
                "Calls to peer workers for results (under load, one call carries several)",
            ),
            memory_bytes: gauge("memory_bytes", "Bytes of results held in memory"),
            spilled_bytes: gauge("spilled_bytes", "Bytes of results spilled to local disk"),
            held_results: gauge("held_results", "Results held, in memory or on disk"),
            paused: gauge("paused", "1 while memory is over the pause threshold"),
            connected: gauge("connected", "1 while registered with the scheduler"),
            task_duration,
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("Prometheus text format is UTF-8")
    }
}
