//! The process's clock for timelines: seconds since its first reading, from
//! the monotonic clock. Workers stamp task runs and spills with it; the
//! scheduler moves those stamps onto its own clock by the offset between
//! the two when a batch arrives (see `WorkerBatch.clock`).

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Seconds since the process's clock started.
pub fn now() -> f64 {
    seconds_at(Instant::now())
}

/// An instant on the process's clock; instants before its start read 0.
pub fn seconds_at(at: Instant) -> f64 {
    at.saturating_duration_since(epoch()).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_monotonic_clock() {
        let start = Instant::now();
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = now();
        assert!(b - a >= 0.02, "{a} then {b}");
        assert!(seconds_at(start) <= a);
        assert!(seconds_at(start + std::time::Duration::from_secs(5)) >= a + 4.9);
    }
}
