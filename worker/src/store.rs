//! Where a worker keeps results: in memory up to a target share of its
//! memory limit, beyond that spilled to local disk, least recently used first.
//!
//! The lock guards maps and counters only: a spill writes its file with the
//! lock released, so the session, which reads the store on every message
//! and heartbeat, never waits for the disk. A result being written stays
//! readable from memory until its file is complete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use daskrs_core::DataFormat;

use crate::data::Data;

/// Dask's defaults: spill above 60% of the limit, pause new work above 80%,
/// and above 95% stop the task process that holds the most memory.
pub const TARGET_FRACTION: f64 = 0.6;
pub const PAUSE_FRACTION: f64 = 0.8;
pub const TERMINATE_FRACTION: f64 = 0.95;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot spill result {id} to {path}: {source}")]
    Spill {
        id: u64,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read spilled result {id} from {path}: {source}")]
    Unspill {
        id: u64,
        path: PathBuf,
        source: std::io::Error,
    },
}

struct InMemory {
    data: Data,
    used: u64,
}

/// A result whose file is being written; `token` tells this spill from a
/// later one of the same task, should the result be replaced meanwhile.
struct Spilling {
    data: Data,
    used: u64,
    token: u64,
}

struct OnDisk {
    format: DataFormat,
    len: u64,
    path: PathBuf,
}

#[derive(Default)]
struct Inner {
    memory: HashMap<u64, InMemory>,
    spilling: HashMap<u64, Spilling>,
    disk: HashMap<u64, OnDisk>,
    /// Last use -> task, oldest first.
    lru: BTreeMap<u64, u64>,
    clock: u64,
    /// Bytes in `memory` and `spilling`: both are still in memory.
    memory_bytes: u64,
    /// Bytes in `spilling`.
    spilling_bytes: u64,
    disk_bytes: u64,
    spilled_total: u64,
    /// Spills that failed, their results kept in memory.
    spill_failures: u64,
    /// Bumped by `clear`: a task started before it must not store its result after.
    generation: u64,
    /// Results read by a task or a peer since they were stored.
    claimed: HashSet<u64>,
    /// Spills since [`Store::take_spills`] last took them.
    spills: Vec<SpillMark>,
}

/// Results written to disk at once: when (on the process's clock,
/// [`daskrs_core::clock`]) and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpillMark {
    pub start: f64,
    pub stop: f64,
    pub bytes: u64,
}

/// Spill marks kept between heartbeats; past this, new spills are added to
/// the last mark.
const MAX_SPILL_MARKS: usize = 256;
/// Spills that start this soon after the last one ended extend its mark.
const SPILL_GAP_SECONDS: f64 = 0.001;

impl Inner {
    fn mark_spill(&mut self, start: f64, stop: f64, bytes: u64) {
        let full = self.spills.len() >= MAX_SPILL_MARKS;
        if let Some(last) = self.spills.last_mut()
            && (start - last.stop < SPILL_GAP_SECONDS || full)
        {
            last.stop = last.stop.max(stop);
            last.bytes += bytes;
            return;
        }
        self.spills.push(SpillMark { start, stop, bytes });
    }
}

/// Writes a spilled result's file. The store's one way to the disk, so a
/// test can hold a spill where it likes.
pub trait SpillWriter: Send + Sync {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
}

/// Plain files in the spill directory.
pub struct FileWriter;

impl SpillWriter for FileWriter {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        fs::File::create(path).and_then(|mut f| f.write_all(bytes))
    }
}

pub struct Store {
    limit: u64,
    /// Memory the worker's tasks use outside this process (Python
    /// executors), which counts toward the limit too.
    outside: std::sync::atomic::AtomicU64,
    dir: PathBuf,
    writer: Arc<dyn SpillWriter>,
    inner: Mutex<Inner>,
}

impl Store {
    /// `dir` must exist and belong to this store alone.
    pub fn new(limit: u64, dir: &Path) -> Store {
        Store::with_writer(limit, dir, Arc::new(FileWriter))
    }

    /// A store whose spills go through `writer`.
    pub fn with_writer(limit: u64, dir: &Path, writer: Arc<dyn SpillWriter>) -> Store {
        Store {
            limit,
            outside: std::sync::atomic::AtomicU64::new(0),
            dir: dir.to_path_buf(),
            writer,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps a result, spilling older ones when memory goes over the target.
    pub fn put(&self, id: u64, data: Data) {
        let generation = self.generation();
        self.put_in(generation, id, data);
    }

    /// Like `put`, but drops the result when the store was cleared since
    /// `generation`; true when it was kept. A result that cannot be spilled
    /// stays in memory: the store is whole either way, and the failure is
    /// logged and counted rather than charged to the result being put.
    pub fn put_in(&self, generation: u64, id: u64, data: Data) -> bool {
        let (old, victims) = {
            let mut g = self.lock();
            if g.generation != generation {
                return false;
            }
            let old = take_locked(&mut g, id);
            g.clock += 1;
            let used = g.clock;
            g.memory_bytes += data.len();
            g.lru.insert(used, id);
            g.memory.insert(id, InMemory { data, used });
            (old, self.pick_victims(&mut g))
        };
        if let Some(old) = old {
            old.discard();
        }
        self.spill(victims);
        true
    }

    /// Moves results from memory to `spilling`, least recently used first,
    /// until what is not on its way to disk fits the target.
    fn pick_victims(&self, g: &mut Inner) -> Vec<(u64, u64, Data)> {
        let target = ((self.limit as f64 * TARGET_FRACTION) as u64).saturating_sub(self.outside());
        let mut victims = Vec::new();
        while g.memory_bytes - g.spilling_bytes > target {
            let Some((_, victim)) = g.lru.pop_first() else {
                break;
            };
            let entry = g.memory.remove(&victim).expect("lru and memory agree");
            g.clock += 1;
            let token = g.clock;
            g.spilling_bytes += entry.data.len();
            victims.push((victim, token, entry.data.clone()));
            g.spilling.insert(
                victim,
                Spilling {
                    data: entry.data,
                    used: entry.used,
                    token,
                },
            );
        }
        victims
    }

    /// Writes the victims' files without the lock, then records each as on
    /// disk, unless it was removed or replaced meanwhile. A write that fails
    /// keeps its result in memory rather than lose it.
    fn spill(&self, victims: Vec<(u64, u64, Data)>) {
        for (id, token, data) in victims {
            let path = self.dir.join(format!("{id}-{token}.bin"));
            let start = daskrs_core::clock::now();
            let write = self.writer.write(&path, &data.bytes);
            let stop = daskrs_core::clock::now();
            let mut g = self.lock();
            let current = g.spilling.get(&id).is_some_and(|s| s.token == token);
            if !current {
                // Removed, replaced or cleared while it was written.
                drop(g);
                let _ = fs::remove_file(&path);
                continue;
            }
            let entry = g.spilling.remove(&id).expect("checked above");
            let len = entry.data.len();
            g.spilling_bytes -= len;
            match write {
                Ok(()) => {
                    g.memory_bytes -= len;
                    g.disk_bytes += len;
                    g.spilled_total += len;
                    g.mark_spill(start, stop, len);
                    g.disk.insert(
                        id,
                        OnDisk {
                            format: entry.data.format,
                            len,
                            path,
                        },
                    );
                }
                Err(source) => {
                    g.lru.insert(entry.used, id);
                    g.memory.insert(
                        id,
                        InMemory {
                            data: entry.data,
                            used: entry.used,
                        },
                    );
                    g.spill_failures += 1;
                    drop(g);
                    let _ = fs::remove_file(&path);
                    let e = StoreError::Spill { id, path, source };
                    tracing::warn!(error = %e, "the result stays in memory");
                }
            }
        }
    }

    /// A result, read back from disk when it was spilled.
    pub fn get(&self, id: u64) -> Result<Option<Data>, StoreError> {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        let inner = &mut *g;
        if let Some(e) = inner.memory.get_mut(&id) {
            inner.lru.remove(&e.used);
            e.used = now;
            inner.lru.insert(now, id);
            return Ok(Some(e.data.clone()));
        }
        if let Some(s) = inner.spilling.get(&id) {
            return Ok(Some(s.data.clone()));
        }
        let Some(d) = inner.disk.get(&id) else {
            return Ok(None);
        };
        let (format, path) = (d.format, d.path.clone());
        drop(g);
        let bytes = fs::read(&path).map_err(|source| StoreError::Unspill { id, path, source })?;
        Ok(Some(Data {
            format,
            bytes: bytes.into(),
        }))
    }

    /// A result as an input of a task here or elsewhere: like `get`, and
    /// marks it as read.
    pub fn claim(&self, id: u64) -> Result<Option<Data>, StoreError> {
        let data = self.get(id)?;
        if data.is_some() {
            self.lock().claimed.insert(id);
        }
        Ok(data)
    }

    /// Whether a task or a peer read the result since it was stored.
    pub fn is_claimed(&self, id: u64) -> bool {
        self.lock().claimed.contains(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        let g = self.lock();
        g.memory.contains_key(&id) || g.spilling.contains_key(&id) || g.disk.contains_key(&id)
    }

    pub fn remove(&self, id: u64) {
        if let Some(taken) = self.take(id) {
            taken.discard();
        }
    }

    /// Takes a result out of the store, with whether a task or a peer read
    /// it since it was stored.
    pub fn take_claimed(&self, id: u64) -> Option<(Taken, bool)> {
        let mut g = self.lock();
        let claimed = g.claimed.contains(&id);
        take_locked(&mut g, id).map(|t| (t, claimed))
    }

    /// Takes a result out of the store: nothing reads it there any more.
    pub fn take(&self, id: u64) -> Option<Taken> {
        take_locked(&mut self.lock(), id)
    }

    /// Drops every result, as after losing the scheduler.
    pub fn clear(&self) {
        let taken: Vec<Taken> = {
            let mut g = self.lock();
            let ids: Vec<u64> = g
                .memory
                .keys()
                .chain(g.spilling.keys())
                .chain(g.disk.keys())
                .copied()
                .collect();
            g.generation += 1;
            ids.into_iter()
                .filter_map(|id| take_locked(&mut g, id))
                .collect()
        };
        for t in taken {
            t.discard();
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.lock().memory_bytes
    }

    pub fn spilled_bytes(&self) -> u64 {
        self.lock().disk_bytes
    }

    pub fn spilled_total(&self) -> u64 {
        self.lock().spilled_total
    }

    /// The spills since the last call, oldest first.
    pub fn take_spills(&self) -> Vec<SpillMark> {
        std::mem::take(&mut self.lock().spills)
    }

    pub fn spill_failures(&self) -> u64 {
        self.lock().spill_failures
    }

    pub fn len(&self) -> usize {
        let g = self.lock();
        g.memory.len() + g.spilling.len() + g.disk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether managed memory, with what tasks use outside the process,
    /// is above the pause threshold.
    pub fn over_pause(&self) -> bool {
        self.memory_bytes() + self.outside() > self.pause_bytes()
    }

    /// Above this much memory the worker takes no new tasks.
    pub fn pause_bytes(&self) -> u64 {
        (self.limit as f64 * PAUSE_FRACTION) as u64
    }

    /// Sets the memory the worker's tasks use outside this process.
    pub fn set_outside(&self, bytes: u64) {
        self.outside
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn outside(&self) -> u64 {
        self.outside.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A result taken out of the store, as it was held.
pub enum Taken {
    /// In memory, or being spilled (its writer finds it gone and removes
    /// the file).
    Memory(Data),
    /// On disk: the file is the taker's to read or remove.
    Disk { format: DataFormat, path: PathBuf },
}

impl Taken {
    /// The result's bytes, read back from disk if need be (blocks).
    pub fn read(&self, id: u64) -> Result<Data, StoreError> {
        match self {
            Taken::Memory(d) => Ok(d.clone()),
            Taken::Disk { format, path } => {
                let bytes = fs::read(path).map_err(|source| StoreError::Unspill {
                    id,
                    path: path.clone(),
                    source,
                })?;
                Ok(Data {
                    format: *format,
                    bytes: bytes.into(),
                })
            }
        }
    }

    /// Lets go of the result's file, if it has one.
    pub fn discard(self) {
        if let Taken::Disk { path, .. } = self {
            // Already gone is fine: the file is ours alone.
            let _ = fs::remove_file(&path);
        }
    }
}

/// Removes a result from the maps and counters; its file, if any, is left
/// to the caller, to remove once the lock is let go of.
fn take_locked(g: &mut Inner, id: u64) -> Option<Taken> {
    g.claimed.remove(&id);
    if let Some(e) = g.memory.remove(&id) {
        g.lru.remove(&e.used);
        g.memory_bytes -= e.data.len();
        return Some(Taken::Memory(e.data));
    }
    if let Some(s) = g.spilling.remove(&id) {
        g.memory_bytes -= s.data.len();
        g.spilling_bytes -= s.data.len();
        return Some(Taken::Memory(s.data));
    }
    let d = g.disk.remove(&id)?;
    g.disk_bytes -= d.len;
    Some(Taken::Disk {
        format: d.format,
        path: d.path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize, fill: u8) -> Data {
        Data::opaque(vec![fill; n])
    }

    fn spill_files(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn spills_least_recently_used_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(1000, dir.path());
        store.put(1, blob(250, 1));
        store.put(2, blob(250, 2));
        store.get(1).unwrap();
        store.put(3, blob(250, 3));
        // 750 > 600: the least recently used (2) goes to disk.
        assert_eq!(store.memory_bytes(), 500);
        assert_eq!(store.spilled_bytes(), 250);
        assert_eq!(spill_files(dir.path()), 1);
        assert_eq!(store.get(2).unwrap().unwrap(), blob(250, 2));
        store.remove(2);
        assert_eq!(spill_files(dir.path()), 0);
        assert_eq!(store.spilled_bytes(), 0);
        assert_eq!(store.len(), 2);
        let before = store.generation();
        store.clear();
        assert!(store.is_empty());
        assert_eq!(store.memory_bytes(), 0);
        assert!(!store.put_in(before, 5, blob(10, 5)));
        assert!(
            !store.contains(5),
            "a result from before the clear is dropped"
        );
    }

    #[test]
    fn spills_are_marked_for_the_heartbeat_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(1000, dir.path());
        let before = daskrs_core::clock::now();
        store.put(1, blob(250, 1));
        store.put(2, blob(250, 2));
        assert!(store.take_spills().is_empty(), "nothing spilled yet");
        store.put(3, blob(250, 3));
        store.put(4, blob(250, 4));
        let marks = store.take_spills();
        assert_eq!(marks.iter().map(|m| m.bytes).sum::<u64>(), 500, "{marks:?}");
        for m in &marks {
            assert!(before <= m.start && m.start <= m.stop, "{m:?}");
        }
        assert!(store.take_spills().is_empty(), "taken once");
        // However many spills come between heartbeats, the marks stay few.
        for i in 10..(10 + 4 * MAX_SPILL_MARKS as u64) {
            store.put(i, blob(250, 5));
        }
        let marks = store.take_spills();
        assert!(marks.len() <= MAX_SPILL_MARKS, "{}", marks.len());
        assert_eq!(
            marks.iter().map(|m| m.bytes).sum::<u64>(),
            store.spilled_total() - 500
        );
    }

    #[test]
    fn reading_a_result_as_an_input_claims_it_until_it_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(1000, dir.path());
        store.put(1, blob(10, 1));
        store.get(1).unwrap();
        assert!(!store.is_claimed(1), "a plain read claims nothing");
        assert!(store.claim(7).unwrap().is_none());
        assert!(!store.is_claimed(7), "nothing to claim");
        assert_eq!(store.claim(1).unwrap().unwrap(), blob(10, 1));
        assert!(store.is_claimed(1));
        store.put(1, blob(10, 2));
        assert!(!store.is_claimed(1), "a new result is unread");
        store.claim(1).unwrap();
        store.remove(1);
        assert!(!store.is_claimed(1));
    }

    #[test]
    fn result_larger_than_target_goes_straight_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(100, dir.path());
        store.put(9, blob(500, 9));
        assert_eq!(store.memory_bytes(), 0);
        assert_eq!(store.get(9).unwrap().unwrap().len(), 500);
        assert!(!store.over_pause());
    }

    #[test]
    fn a_spill_that_fails_keeps_the_result_in_memory_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("missing-subdir");
        let store = Store::new(100, &gone);
        assert!(store.put_in(store.generation(), 1, blob(500, 1)));
        assert_eq!(store.spill_failures(), 1);
        assert_eq!((store.memory_bytes(), store.spilled_bytes()), (500, 0));
        assert_eq!(store.get(1).unwrap().unwrap().len(), 500);
        assert!(store.over_pause());
    }

    /// Holds every spill until told to go on.
    struct Gate {
        entered: std::sync::mpsc::Sender<()>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl SpillWriter for Gate {
        fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
            let _ = self.entered.send(());
            // A spill nobody lets go of fails the test instead of hanging it.
            let go = self
                .go
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(30));
            go.expect("the test let the spill go on");
            FileWriter.write(path, bytes)
        }
    }

    type Signal = std::sync::mpsc::Receiver<()>;

    /// A store whose spills each wait for a send on the returned sender,
    /// after saying on the returned receiver that they started.
    fn gated(limit: u64, dir: &Path) -> (Arc<Store>, Signal, std::sync::mpsc::Sender<()>) {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate {
            entered: entered_tx,
            go: Mutex::new(go_rx),
        });
        (Arc::new(Store::with_writer(limit, dir, gate)), entered, go)
    }

    #[test]
    fn reads_do_not_wait_for_a_spill_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entered, go) = gated(1000, dir.path());
        store.put(1, blob(450, 1));
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.put(2, blob(450, 2)))
        };
        entered
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the spill started");
        // Result 1 is being written; everything a heartbeat or a task reads
        // answers meanwhile, from memory.
        assert_eq!(store.memory_bytes(), 900);
        assert_eq!(store.spilled_bytes(), 0);
        assert_eq!(store.len(), 2);
        assert!(store.contains(1) && store.contains(2));
        assert!(store.over_pause());
        assert_eq!(store.get(1).unwrap().unwrap(), blob(450, 1));
        // What is not on its way to disk fits: this put spills nothing.
        store.put(3, blob(10, 3));
        go.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(store.memory_bytes(), 460);
        assert_eq!(store.spilled_bytes(), 450);
        assert_eq!(store.get(1).unwrap().unwrap(), blob(450, 1));
        assert_eq!(spill_files(dir.path()), 1);
    }

    #[test]
    fn a_result_removed_while_it_spills_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entered, go) = gated(100, dir.path());
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.put(1, blob(500, 1)))
        };
        entered
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the spill started");
        store.remove(1);
        assert!(!store.contains(1));
        assert_eq!(store.memory_bytes(), 0);
        go.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!((store.memory_bytes(), store.spilled_bytes()), (0, 0));
        assert_eq!(spill_files(dir.path()), 0);
    }
}
