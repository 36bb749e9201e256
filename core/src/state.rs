use std::fmt;

/// The life of a task on the scheduler, after Dask's task states.
///
/// `Released` means the scheduler knows the task but nobody needs its result
/// right now (never run yet, or run and freed); `Forgotten` is only reported,
/// never stored: a forgotten task is gone from the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    Released,
    Waiting,
    Queued,
    Processing,
    Memory,
    Erred,
    Forgotten,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Released,
        TaskState::Waiting,
        TaskState::Queued,
        TaskState::Processing,
        TaskState::Memory,
        TaskState::Erred,
        TaskState::Forgotten,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Released => "released",
            TaskState::Waiting => "waiting",
            TaskState::Queued => "queued",
            TaskState::Processing => "processing",
            TaskState::Memory => "memory",
            TaskState::Erred => "erred",
            TaskState::Forgotten => "forgotten",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
