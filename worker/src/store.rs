//! Where a worker keeps results: in memory up to a target share of its
//! memory limit, beyond that spilled to local disk, least recently used first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use daskrs_proto::DataFormat;

use crate::data::Data;

/// Dask's defaults: spill above 60% of the limit, pause new work above 80%.
pub const TARGET_FRACTION: f64 = 0.6;
pub const PAUSE_FRACTION: f64 = 0.8;

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

struct OnDisk {
    format: DataFormat,
    len: u64,
    path: PathBuf,
}

#[derive(Default)]
struct Inner {
    memory: HashMap<u64, InMemory>,
    disk: HashMap<u64, OnDisk>,
    /// Last use -> task, oldest first.
    lru: BTreeMap<u64, u64>,
    clock: u64,
    memory_bytes: u64,
    disk_bytes: u64,
    spilled_total: u64,
    /// Bumped by `clear`: a task started before it must not store its result after.
    generation: u64,
    /// Results read by a task or a peer since they were stored.
    claimed: HashSet<u64>,
}

pub struct Store {
    limit: u64,
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl Store {
    /// `dir` must exist and belong to this store alone.
    pub fn new(limit: u64, dir: &Path) -> Store {
        Store {
            limit,
            dir: dir.to_path_buf(),
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
    pub fn put(&self, id: u64, data: Data) -> Result<(), StoreError> {
        let generation = self.generation();
        self.put_in(generation, id, data).map(|_| ())
    }

    /// Like `put`, but drops the result when the store was cleared since
    /// `generation`; true when it was kept.
    pub fn put_in(&self, generation: u64, id: u64, data: Data) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if g.generation != generation {
            return Ok(false);
        }
        remove_locked(&mut g, id);
        g.clock += 1;
        let used = g.clock;
        g.memory_bytes += data.len();
        g.lru.insert(used, id);
        g.memory.insert(id, InMemory { data, used });
        let target = (self.limit as f64 * TARGET_FRACTION) as u64;
        while g.memory_bytes > target {
            let Some((_, victim)) = g.lru.pop_first() else {
                break;
            };
            let entry = g.memory.remove(&victim).expect("lru and memory agree");
            let path = self.dir.join(format!("{victim}.bin"));
            let write = fs::File::create(&path).and_then(|mut f| f.write_all(&entry.data.bytes));
            if let Err(source) = write {
                // Keep it in memory rather than lose it.
                g.lru.insert(entry.used, victim);
                g.memory.insert(victim, entry);
                return Err(StoreError::Spill {
                    id: victim,
                    path,
                    source,
                });
            }
            let len = entry.data.len();
            g.memory_bytes -= len;
            g.disk_bytes += len;
            g.spilled_total += len;
            g.disk.insert(
                victim,
                OnDisk {
                    format: entry.data.format,
                    len,
                    path,
                },
            );
        }
        Ok(true)
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
        g.memory.contains_key(&id) || g.disk.contains_key(&id)
    }

    pub fn remove(&self, id: u64) {
        remove_locked(&mut self.lock(), id);
    }

    /// Drops every result, as after losing the scheduler.
    pub fn clear(&self) {
        let mut g = self.lock();
        let ids: Vec<u64> = g.memory.keys().chain(g.disk.keys()).copied().collect();
        for id in ids {
            remove_locked(&mut g, id);
        }
        g.generation += 1;
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

    pub fn len(&self) -> usize {
        let g = self.lock();
        g.memory.len() + g.disk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether managed memory is above the pause threshold.
    pub fn over_pause(&self) -> bool {
        self.memory_bytes() as f64 > self.limit as f64 * PAUSE_FRACTION
    }
}

fn remove_locked(g: &mut Inner, id: u64) {
    g.claimed.remove(&id);
    if let Some(e) = g.memory.remove(&id) {
        g.lru.remove(&e.used);
        g.memory_bytes -= e.data.len();
    }
    if let Some(d) = g.disk.remove(&id) {
        g.disk_bytes -= d.len;
        // Already gone is fine: the file is ours alone.
        let _ = fs::remove_file(&d.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize, fill: u8) -> Data {
        Data::opaque(vec![fill; n])
    }

    #[test]
    fn spills_least_recently_used_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(1000, dir.path());
        store.put(1, blob(250, 1)).unwrap();
        store.put(2, blob(250, 2)).unwrap();
        store.get(1).unwrap();
        store.put(3, blob(250, 3)).unwrap();
        // 750 > 600: the least recently used (2) goes to disk.
        assert_eq!(store.memory_bytes(), 500);
        assert_eq!(store.spilled_bytes(), 250);
        assert!(dir.path().join("2.bin").exists());
        assert_eq!(store.get(2).unwrap().unwrap(), blob(250, 2));
        store.remove(2);
        assert!(!dir.path().join("2.bin").exists());
        assert_eq!(store.spilled_bytes(), 0);
        assert_eq!(store.len(), 2);
        let before = store.generation();
        store.clear();
        assert!(store.is_empty());
        assert_eq!(store.memory_bytes(), 0);
        assert!(!store.put_in(before, 5, blob(10, 5)).unwrap());
        assert!(
            !store.contains(5),
            "a result from before the clear is dropped"
        );
    }

    #[test]
    fn reading_a_result_as_an_input_claims_it_until_it_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(1000, dir.path());
        store.put(1, blob(10, 1)).unwrap();
        store.get(1).unwrap();
        assert!(!store.is_claimed(1), "a plain read claims nothing");
        assert!(store.claim(7).unwrap().is_none());
        assert!(!store.is_claimed(7), "nothing to claim");
        assert_eq!(store.claim(1).unwrap().unwrap(), blob(10, 1));
        assert!(store.is_claimed(1));
        store.put(1, blob(10, 2)).unwrap();
        assert!(!store.is_claimed(1), "a new result is unread");
        store.claim(1).unwrap();
        store.remove(1);
        assert!(!store.is_claimed(1));
    }

    #[test]
    fn result_larger_than_target_goes_straight_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(100, dir.path());
        store.put(9, blob(500, 9)).unwrap();
        assert_eq!(store.memory_bytes(), 0);
        assert_eq!(store.get(9).unwrap().unwrap().len(), 500);
        assert!(!store.over_pause());
    }

    #[test]
    fn spill_failure_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("missing-subdir");
        let store = Store::new(100, &gone);
        let e = store.put(1, blob(500, 1)).unwrap_err();
        assert!(e.to_string().contains("cannot spill result 1"), "{e}");
        assert_eq!(store.get(1).unwrap().unwrap().len(), 500);
        assert!(store.over_pause());
    }
}
