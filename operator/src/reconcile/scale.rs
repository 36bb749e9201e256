//! The scaling decision, pure: how many workers the cluster should have,
//! and which pods go when there are too many. The apply stage asks the
//! scheduler and the API server; everything it decides with is here, so
//! the policy is tested without either.
//!
//! - Scale up at once; adaptive scale-down only after the scheduler has
//!   wanted fewer workers for a while, so a pause between two jobs does not
//!   churn pods. An idle timeout that has run out scales to zero at once.
//! - Scale-down removes pods that are not ready first (nothing to hand
//!   off), then the ones the scheduler retires.
//! - Pods made from an older template are replaced: new pods first, then
//!   the stale ones retired once enough new ones are ready.

use std::time::{Duration, Instant};

use super::read::{ObservedPod, PodState};
use crate::crd::AutoscalingSpec;
use crate::scheduler_api::Adaptive;

/// A live worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPod {
    pub name: String,
    pub ready: bool,
    /// Made from the current template.
    pub fresh: bool,
}

/// A worker pod whose containers have exited for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedPod {
    pub name: String,
    /// Why it failed; None when it succeeded (a retired worker).
    pub failure: Option<String>,
}

/// The worker pods of a cluster, sorted by what the reconciler does with
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workers {
    pub live: Vec<WorkerPod>,
    pub ended: Vec<EndedPod>,
    pub terminating: usize,
}

impl Workers {
    /// `hash`: the current template's; pods with another one are stale.
    pub fn classify(observed: &[ObservedPod], hash: &str) -> Workers {
        let mut w = Workers::default();
        for pod in observed {
            match &pod.state {
                PodState::Terminating => w.terminating += 1,
                PodState::Ended { failure } => w.ended.push(EndedPod {
                    name: pod.name.clone(),
                    failure: failure.clone(),
                }),
                PodState::Live { ready } => w.live.push(WorkerPod {
                    name: pod.name.clone(),
                    ready: *ready,
                    fresh: pod.template_hash.as_deref() == Some(hash),
                }),
            }
        }
        w
    }

    /// Live pods that are (or, with None, either) ready and fresh.
    pub fn count(&self, ready: Option<bool>, fresh: Option<bool>) -> usize {
        self.live
            .iter()
            .filter(|p| ready.is_none_or(|r| r == p.ready) && fresh.is_none_or(|f| f == p.fresh))
            .count()
    }

    /// Names of the live pods that are exactly this ready and fresh, sorted.
    fn names(&self, ready: bool, fresh: bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .live
            .iter()
            .filter(|p| p.ready == ready && p.fresh == fresh)
            .map(|p| p.name.clone())
            .collect();
        v.sort();
        v
    }
}

/// What the target is decided from.
#[derive(Clone, Debug)]
pub struct Scaling<'a> {
    /// `spec.worker.replicas`.
    pub replicas: i32,
    pub autoscaling: Option<&'a AutoscalingSpec>,
    pub idle_timeout: Option<Duration>,
    /// Live worker pods now.
    pub current: usize,
    /// The operator has never written this cluster's status.
    pub first_pass: bool,
    /// The scheduler's answer, when asked and it answered.
    pub adaptive: Option<&'a Adaptive>,
    /// Since when the scheduler has wanted fewer workers than there are.
    pub low_since: Option<Instant>,
    pub now: Instant,
    pub scale_down_delay: Duration,
}

/// The decision: the worker count to steer to, and the new `low_since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub workers: usize,
    pub low_since: Option<Instant>,
}

/// Whether the target depends on the scheduler's answer.
pub fn asks_scheduler(autoscaling: Option<&AutoscalingSpec>, idle: Option<Duration>) -> bool {
    autoscaling.is_some() || idle.is_some()
}

pub fn target(s: &Scaling) -> Target {
    let base = s.replicas.max(0) as usize;
    let keep = |workers| Target {
        workers,
        low_since: s.low_since,
    };
    if !asks_scheduler(s.autoscaling, s.idle_timeout) {
        return keep(base);
    }
    let Some(a) = s.adaptive else {
        // Without an answer, keep what there is (within bounds).
        return keep(match s.autoscaling {
            Some(auto) => clamp(
                if s.current == 0 && s.first_pass {
                    base
                } else {
                    s.current
                },
                auto,
            ),
            None => base,
        });
    };
    let busy = a.tasks_waiting + a.tasks_processing > 0;
    let mut want = match s.autoscaling {
        Some(auto) => clamp(a.desired_workers as usize, auto),
        None => base,
    };
    if s.idle_timeout
        .is_some_and(|limit| !busy && a.idle_seconds >= limit.as_secs_f64())
    {
        want = 0;
    }
    if want >= s.current {
        return Target {
            workers: want,
            low_since: None,
        };
    }
    let since = s.low_since.unwrap_or(s.now);
    let waited = s.now.saturating_duration_since(since) >= s.scale_down_delay;
    // Going to zero while idle needs no delay: the idle timeout was the wait.
    let idle_to_zero = want == 0 && !busy && s.idle_timeout.is_some();
    Target {
        workers: if waited || idle_to_zero {
            want
        } else {
            s.current
        },
        low_since: Some(since),
    }
}

fn clamp(n: usize, auto: &AutoscalingSpec) -> usize {
    let (min, max) = (auto.min_replicas, auto.max_replicas);
    n.clamp(min.max(0) as usize, max.max(min).max(0) as usize)
}

/// The pods beyond the target and how they go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Deleted without asking the scheduler: nothing to hand off.
    pub delete: Vec<String>,
    /// Fresh ready workers the scheduler is asked to choose and retire.
    pub retire_count: usize,
    /// Stale ready workers the scheduler is asked to retire by name, now
    /// that enough fresh ones are ready to take over.
    pub retire_named: Vec<String>,
}

pub fn removal(workers: &Workers, target: usize) -> Removal {
    let fresh_total = workers.count(None, Some(true));
    let fresh_ready = workers.count(Some(true), Some(true));
    let stale_ready = workers.names(true, false);
    // 1. Stale pods that are not ready.
    let mut delete = workers.names(false, false);
    // 2. Stale ready pods, once enough fresh pods are ready to take over.
    let stale_out = (fresh_ready + stale_ready.len()).saturating_sub(target);
    let retire_named = stale_ready.into_iter().take(stale_out).collect();
    // 3. Fresh pods beyond the target: those not ready first, then the
    //    ones the scheduler chooses.
    let excess = fresh_total.saturating_sub(target);
    let unready: Vec<String> = workers
        .names(false, true)
        .into_iter()
        .take(excess)
        .collect();
    let retire_count = excess - unready.len();
    delete.extend(unready);
    Removal {
        delete,
        retire_count,
        retire_named,
    }
}

/// The pods to delete for `count` retirements after the scheduler chose
/// `chosen`: those of its choice that are this cluster's pods, then (for
/// workers it does not know yet, still starting) the newest-named fresh
/// ready pods it did not choose. Returns (retired by the scheduler, the
/// rest).
pub fn retired(workers: &Workers, chosen: Vec<String>, count: usize) -> (Vec<String>, Vec<String>) {
    let ours: Vec<String> = chosen
        .into_iter()
        .filter(|n| workers.live.iter().any(|p| &p.name == n))
        .collect();
    let more = count.saturating_sub(ours.len());
    let rest = workers
        .names(true, true)
        .into_iter()
        .rev()
        .filter(|n| !ours.contains(n))
        .take(more)
        .collect();
    (ours, rest)
}

/// The pods to delete for `count` retirements when the scheduler cannot be
/// asked: SIGTERM makes each worker hand off its results itself.
pub fn unretired(workers: &Workers, count: usize) -> Vec<String> {
    workers
        .names(true, true)
        .into_iter()
        .rev()
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::fixture;

    fn pod(name: &str, ready: bool, fresh: bool) -> WorkerPod {
        WorkerPod {
            name: name.into(),
            ready,
            fresh,
        }
    }

    fn workers(live: Vec<WorkerPod>) -> Workers {
        Workers {
            live,
            ..Workers::default()
        }
    }

    fn adaptive(desired: u64, waiting: u64, idle: f64) -> Adaptive {
        Adaptive {
            desired_workers: desired,
            tasks_waiting: waiting,
            tasks_processing: 0,
            idle_seconds: idle,
        }
    }

    /// The decision for the `autoscaling` fixture (1 to 4 workers, idle
    /// after 10m) with `current` workers and this answer.
    fn decide(
        current: usize,
        a: Option<&Adaptive>,
        low_since: Option<Instant>,
        now: Instant,
    ) -> Target {
        let c = fixture("autoscaling");
        let valid = crate::reconcile::validate::validate(&c).expect("valid");
        target(&Scaling {
            replicas: c.spec.worker.replicas,
            autoscaling: c.spec.autoscaling.as_ref(),
            idle_timeout: valid.idle_timeout,
            current,
            first_pass: c.status.is_none(),
            adaptive: a,
            low_since,
            now,
            scale_down_delay: Duration::from_secs(60),
        })
    }

    #[test]
    fn without_autoscaling_the_target_is_the_replica_count() {
        let c = fixture("minimal");
        let t = target(&Scaling {
            replicas: c.spec.worker.replicas,
            autoscaling: None,
            idle_timeout: None,
            current: 7,
            first_pass: true,
            adaptive: None,
            low_since: None,
            now: Instant::now(),
            scale_down_delay: Duration::from_secs(60),
        });
        assert_eq!(t.workers, 2);
    }

    #[test]
    fn autoscaling_targets_stay_within_min_and_max_replicas() {
        let now = Instant::now();
        assert_eq!(
            decide(2, Some(&adaptive(40, 10, 0.0)), None, now).workers,
            4
        );
        assert_eq!(decide(2, Some(&adaptive(3, 10, 0.0)), None, now).workers, 3);
        let long_ago = now - Duration::from_secs(120);
        assert_eq!(
            decide(2, Some(&adaptive(0, 10, 0.0)), Some(long_ago), now).workers,
            1
        );
    }

    #[test]
    fn a_scheduler_that_does_not_answer_keeps_the_workers_there_are() {
        let now = Instant::now();
        assert_eq!(decide(3, None, None, now).workers, 3);
        assert_eq!(decide(9, None, None, now).workers, 4, "within bounds");
    }

    #[test]
    fn scale_up_is_immediate_and_forgets_an_earlier_wish_for_fewer() {
        let now = Instant::now();
        let t = decide(2, Some(&adaptive(4, 10, 0.0)), Some(now), now);
        assert_eq!(
            t,
            Target {
                workers: 4,
                low_since: None
            }
        );
    }

    #[test]
    fn adaptive_scale_down_waits_until_the_wish_has_held_for_the_delay() {
        let start = Instant::now();
        let a = adaptive(1, 10, 0.0);
        let t = decide(3, Some(&a), None, start);
        assert_eq!(
            t,
            Target {
                workers: 3,
                low_since: Some(start)
            }
        );
        let later = start + Duration::from_secs(59);
        assert_eq!(decide(3, Some(&a), t.low_since, later).workers, 3);
        let after = start + Duration::from_secs(60);
        let t = decide(3, Some(&a), t.low_since, after);
        assert_eq!(
            t,
            Target {
                workers: 1,
                low_since: Some(start)
            }
        );
    }

    #[test]
    fn an_idle_timeout_that_ran_out_scales_to_zero_without_waiting() {
        let now = Instant::now();
        let idle = adaptive(0, 0, 601.0);
        assert_eq!(decide(3, Some(&idle), None, now).workers, 0);
        let busy = adaptive(0, 5, 601.0);
        assert_eq!(
            decide(3, Some(&busy), None, now).workers,
            3,
            "waiting tasks are work"
        );
        let not_yet = adaptive(0, 0, 599.0);
        assert_eq!(decide(3, Some(&not_yet), None, now).workers, 3);
    }

    #[test]
    fn scale_down_deletes_unready_pods_before_asking_the_scheduler() {
        let w = workers(vec![
            pod("a", true, true),
            pod("b", true, true),
            pod("c", false, true),
        ]);
        assert_eq!(
            removal(&w, 1),
            Removal {
                delete: vec!["c".into()],
                retire_count: 1,
                retire_named: vec![],
            }
        );
        assert_eq!(removal(&w, 3), Removal::default());
    }

    #[test]
    fn stale_pods_are_retired_only_as_fresh_ones_become_ready() {
        let rolling = workers(vec![
            pod("old-a", true, false),
            pod("old-b", true, false),
            pod("old-c", false, false),
            pod("new-a", false, true),
            pod("new-b", false, true),
        ]);
        assert_eq!(
            removal(&rolling, 2),
            Removal {
                delete: vec!["old-c".into()],
                retire_count: 0,
                retire_named: vec![],
            },
            "no new pod ready: the old ready ones stay"
        );
        let mut half = rolling.clone();
        half.live[3].ready = true;
        assert_eq!(removal(&half, 2).retire_named, vec!["old-a".to_string()]);
    }

    #[test]
    fn workers_the_scheduler_does_not_know_yet_make_up_a_short_retirement() {
        let w = workers(vec![
            pod("a", true, true),
            pod("b", true, true),
            pod("c", true, true),
        ]);
        let (ours, rest) = retired(&w, vec!["b".into(), "elsewhere".into()], 2);
        assert_eq!(ours, vec!["b".to_string()]);
        assert_eq!(rest, vec!["c".to_string()]);
        assert_eq!(unretired(&w, 2), vec!["c".to_string(), "b".to_string()]);
    }

    #[test]
    fn pods_are_sorted_into_live_ended_and_terminating_with_their_freshness() {
        let observed = vec![
            ObservedPod {
                name: "a".into(),
                template_hash: Some("h1".into()),
                state: PodState::Live { ready: true },
            },
            ObservedPod {
                name: "b".into(),
                template_hash: Some("h0".into()),
                state: PodState::Live { ready: false },
            },
            ObservedPod {
                name: "c".into(),
                template_hash: Some("h1".into()),
                state: PodState::Ended {
                    failure: Some("Evicted".into()),
                },
            },
            ObservedPod {
                name: "d".into(),
                template_hash: None,
                state: PodState::Terminating,
            },
        ];
        let w = Workers::classify(&observed, "h1");
        assert_eq!(w.live, vec![pod("a", true, true), pod("b", false, false)]);
        assert_eq!(
            w.ended,
            vec![EndedPod {
                name: "c".into(),
                failure: Some("Evicted".into())
            }]
        );
        assert_eq!(w.terminating, 1);
    }
}
