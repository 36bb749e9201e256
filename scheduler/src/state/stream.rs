//! The task stream: a bounded ring of what the workers' threads did lately
//! (task runs, with the span their inputs were fetched in, and spills to
//! disk), for the dashboard's timeline and `/api/v1/task-stream`. It holds
//! the newest records only, however many tasks run: memory stays bounded.

use std::collections::VecDeque;
use std::sync::Arc;

use super::task::WorkerId;

/// Records kept by default: minutes of a busy cluster's history, at about
/// a hundred bytes each (Dask keeps as many).
pub const DEFAULT_TASK_STREAM_LEN: usize = 100_000;

/// One bar of the stream. Times are seconds on the scheduler's clock
/// ([`daskrs_core::clock`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Numbers records in order, from 1, for readers to ask for what is new.
    pub seq: u64,
    pub worker: WorkerId,
    pub what: What,
    pub start: f64,
    pub stop: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// A task ran on a thread of the worker.
    Task {
        key: Arc<str>,
        prefix: Arc<str>,
        thread: u32,
        /// When its inputs were fetched from peers, if any were.
        fetch: Option<(f64, f64)>,
        nbytes: u64,
        transfer_bytes: u64,
    },
    /// The worker wrote results to disk.
    Spill { bytes: u64 },
}

#[derive(Debug)]
pub struct TaskStream {
    records: VecDeque<Record>,
    capacity: usize,
    next_seq: u64,
}

impl TaskStream {
    pub fn new(capacity: usize) -> TaskStream {
        TaskStream {
            records: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            next_seq: 1,
        }
    }

    /// Adds a record, dropping the oldest when full. Times that are not
    /// times (negative, not finite) are taken as the clock's start for the
    /// stop and as the stop for the start; a start after the stop (clocks
    /// that disagree) is taken as the stop, and a fetch as ending by the
    /// start.
    pub fn push(&mut self, worker: WorkerId, mut what: What, start: f64, stop: f64) {
        if self.capacity == 0 {
            return;
        }
        let stop = if stop.is_finite() { stop.max(0.0) } else { 0.0 };
        let start = if start.is_finite() {
            start.clamp(0.0, stop)
        } else {
            stop
        };
        if let What::Task {
            fetch: Some((from, to)),
            ..
        } = &mut what
        {
            *to = to.min(start);
            *from = from.min(*to);
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(Record {
            seq: self.next_seq,
            worker,
            what,
            start,
            stop,
        });
        self.next_seq += 1;
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The number of the newest record (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Records newer than `seq` that ended at or after `since`, at most
    /// `limit` of them, the newest ones when there are more; oldest first.
    pub fn after(&self, seq: u64, since: f64, limit: usize) -> impl Iterator<Item = &Record> {
        let first = self.records.front().map_or(self.next_seq, |r| r.seq);
        let skip = seq.saturating_add(1).saturating_sub(first) as usize;
        let newer = self.records.len().saturating_sub(skip);
        // The newest `limit` of those after `seq`; of them, the ones that
        // ended since `since`.
        let start = self.records.len() - newer.min(limit);
        self.records.range(start..).filter(move |r| r.stop >= since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(key: &str) -> What {
        What::Task {
            key: key.into(),
            prefix: "p".into(),
            thread: 0,
            fetch: None,
            nbytes: 8,
            transfer_bytes: 0,
        }
    }

    #[test]
    fn a_million_tasks_leave_the_newest_records_only() {
        let mut s = TaskStream::new(1000);
        let key: Arc<str> = "x".into();
        for i in 0..1_000_000u64 {
            let what = What::Task {
                key: key.clone(),
                prefix: key.clone(),
                thread: (i % 4) as u32,
                fetch: None,
                nbytes: i,
                transfer_bytes: 0,
            };
            s.push(i % 3, what, i as f64, i as f64 + 0.5);
        }
        assert_eq!(s.len(), 1000);
        assert_eq!(s.last_seq(), 1_000_000);
        assert!(s.records.capacity() < 2048, "{}", s.records.capacity());
        let all: Vec<&Record> = s.after(0, 0.0, usize::MAX).collect();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[0].seq, 999_001);
        assert_eq!(all[999].seq, 1_000_000);
    }

    #[test]
    fn readers_get_what_is_new_within_their_window_and_limit() {
        let mut s = TaskStream::new(10);
        for i in 0..15 {
            s.push(1, task(&format!("t-{i}")), i as f64, i as f64 + 1.0);
        }
        // Records 6..=15 are kept.
        let seqs = |it: Vec<&Record>| it.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.after(12, 0.0, 100).collect()), vec![13, 14, 15]);
        assert_eq!(seqs(s.after(0, 0.0, 3).collect()), vec![13, 14, 15]);
        assert_eq!(seqs(s.after(0, 12.5, 100).collect()), vec![13, 14, 15]);
        assert_eq!(seqs(s.after(15, 0.0, 100).collect()), Vec::<u64>::new());
        assert_eq!(seqs(s.after(99, 0.0, 100).collect()), Vec::<u64>::new());
        assert_eq!(s.after(0, 0.0, 100).count(), 10);
        // A record whose start is after its stop (clocks that disagree) is
        // drawn as an instant, never backwards.
        s.push(2, What::Spill { bytes: 1 }, 30.0, 29.0);
        let last = s.after(15, 0.0, 1).next().unwrap();
        assert_eq!((last.start, last.stop), (29.0, 29.0));
        // A fetch ends by the run's start, and begins by its end.
        let mut fetched = task("f");
        if let What::Task { fetch, .. } = &mut fetched {
            *fetch = Some((41.0, 40.5));
        }
        s.push(2, fetched, 40.0, 41.0);
        match &s.after(16, 0.0, 1).next().unwrap().what {
            What::Task { fetch, .. } => assert_eq!(*fetch, Some((40.0, 40.0))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_of_no_length_keeps_nothing() {
        let mut s = TaskStream::new(0);
        s.push(1, task("a"), 0.0, 1.0);
        assert!(s.is_empty());
        assert_eq!(s.after(0, 0.0, 10).count(), 0);
    }
}
