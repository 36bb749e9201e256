//! Results that hold something outside the worker (a writer's upload not
//! yet committed): which kind lets go of each, and when it may. A result
//! that a task or a peer read belongs to whoever read it (a commit
//! completing the upload) and is left alone.

use std::collections::HashMap;
use std::sync::Arc;

use crate::kinds::TaskKind;
use crate::store::Store;

#[derive(Default)]
pub struct Releases {
    holders: HashMap<u64, Arc<dyn TaskKind>>,
}

impl Releases {
    /// `task`'s stored result holds something `kind` must let go of.
    pub fn hold(&mut self, task: u64, kind: Arc<dyn TaskKind>) {
        self.holders.insert(task, kind);
    }

    /// Drops `task`'s result from the store, letting go of what it holds
    /// unless somebody read it.
    pub fn drop_result(&mut self, store: &Arc<Store>, task: u64) {
        match self.holders.remove(&task) {
            Some(kind) => release(store, task, kind),
            None => store.remove(task),
        }
    }
}

/// Takes a dropped result out of the store and, on a blocking thread (it
/// may have to be read back from disk), hands it to its kind to let go of
/// what it holds. A result that a task or a peer read is theirs: it is
/// only discarded.
pub fn release(store: &Arc<Store>, task: u64, kind: Arc<dyn TaskKind>) {
    let Some((taken, claimed)) = store.take_claimed(task) else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        if !claimed {
            match taken.read(task) {
                Ok(data) => kind.release(&data),
                Err(e) => tracing::warn!(task, error = %e, "cannot read a result to release it"),
            }
        }
        taken.discard();
    });
}
