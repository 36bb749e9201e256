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
    /// first unless somebody read it.
    pub fn drop_result(&mut self, store: &Arc<Store>, task: u64) {
        if let Some(kind) = self.holders.remove(&task) {
            release(store, task, kind);
        }
        store.remove(task);
    }
}

/// Hands a dropped result to its kind to let go of what it holds, on a
/// blocking thread; call before removing it from the store.
pub fn release(store: &Arc<Store>, task: u64, kind: Arc<dyn TaskKind>) {
    if store.is_claimed(task) {
        return;
    }
    let data = match store.get(task) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(task, error = %e, "cannot read a result to release it");
            return;
        }
    };
    tokio::task::spawn_blocking(move || kind.release(&data));
}
