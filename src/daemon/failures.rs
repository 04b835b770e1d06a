//! Fans whose last attempt failed: what failed, how often, and when to try again. Pure, so
//! that the daemon's retry and log policy is tested without a kernel.
//!
//! A fan that cannot be built is retried with backoff (1 s doubling to 64 s), and also on any
//! event that reconciles; its error is logged once per cause, not once per attempt.

use crate::ifname::IfName;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The step that failed (an op, or "plan"), and the error, one line each.
    pub step: String,
    pub error: String,
    pub attempts: u32,
    pub retry_at: Instant,
}

impl Failure {
    /// One line: "attach ...: the kernel's verifier rejected ...: REASON (attempt 3)". A
    /// verifier log is long; the journal has it in full, once.
    pub fn describe(&self) -> String {
        format!("{}: {} (attempt {})", self.step, first_line(&self.error), self.attempts)
    }
}

#[derive(Debug, Default)]
pub struct Failures {
    by_fan: HashMap<IfName, Failure>,
}

impl Failures {
    /// Records that `step` failed with `error`. Says whether this is a new cause for the fan,
    /// which the caller logs at error priority (a repeat goes to debug).
    pub fn failed(&mut self, fan: &IfName, step: String, error: String, now: Instant) -> bool {
        let (attempts, new_cause) = match self.by_fan.get(fan) {
            Some(f) if f.step == step && f.error == error => (f.attempts + 1, false),
            Some(f) => (f.attempts + 1, true),
            None => (1, true),
        };
        self.by_fan.insert(fan.clone(), Failure { step, error, attempts, retry_at: now + backoff(attempts) });
        new_cause
    }

    /// The retry timer fired: every retry due is moved to its next slot before anything is
    /// tried. A reconcile that cannot run (networkd gone, a dump failing) then waits for the
    /// next slot instead of waking the daemon again at once.
    pub fn retrying(&mut self, now: Instant) {
        for f in self.by_fan.values_mut().filter(|f| f.retry_at <= now) {
            f.retry_at = now + backoff(f.attempts);
        }
    }

    /// The fan's plan now applied in full: forgets its failure and returns it, if any.
    pub fn succeeded(&mut self, fan: &IfName) -> Option<Failure> {
        self.by_fan.remove(fan)
    }

    pub fn get(&self, fan: &IfName) -> Option<&Failure> {
        self.by_fan.get(fan)
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.by_fan.values().map(|f| f.retry_at).min()
    }

    /// Forgets fans that are no longer decided on (their rule went away).
    pub fn retain(&mut self, fans: &[IfName]) {
        self.by_fan.retain(|fan, _| fans.contains(fan));
    }
}

/// 1 s after the first failure, doubling up to 64 s.
fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1 << attempts.saturating_sub(1).min(6)).min(LAST_RETRY)
}

fn first_line(error: &str) -> &str {
    error.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fan() -> IfName {
        "fan-250".parse().unwrap()
    }

    #[test]
    fn a_cause_is_new_once_and_backoff_doubles_to_a_ceiling() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        assert!(f.failed(&fan(), "load".into(), "EPERM".into(), t0), "first: log it");
        assert_eq!(f.get(&fan()).unwrap().retry_at, t0 + Duration::from_secs(1));
        assert!(!f.failed(&fan(), "load".into(), "EPERM".into(), t0), "same cause: quiet");
        assert_eq!(f.next_retry(), Some(t0 + Duration::from_secs(2)));
        for _ in 0..10 {
            f.failed(&fan(), "load".into(), "EPERM".into(), t0);
        }
        assert_eq!(f.next_retry(), Some(t0 + LAST_RETRY));
        assert!(f.failed(&fan(), "load".into(), "EINVAL".into(), t0), "another error: log it");
        assert!(f.failed(&fan(), "nat".into(), "EINVAL".into(), t0), "another step: log it");
        assert_eq!(f.get(&fan()).unwrap().attempts, 14);
        assert_eq!(f.get(&fan()).unwrap().describe(), "nat: EINVAL (attempt 14)");
    }

    #[test]
    fn a_retry_that_cannot_run_still_moves_the_timer() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        f.failed(&fan(), "load".into(), "EPERM".into(), t0);
        f.failed(&fan(), "load".into(), "EPERM".into(), t0);
        let due = t0 + Duration::from_secs(2);
        f.retrying(due);
        assert_eq!(f.next_retry(), Some(due + Duration::from_secs(2)), "never in the past");
        assert_eq!(f.get(&fan()).unwrap().attempts, 2, "not an attempt of its own");
        f.retrying(due);
        assert_eq!(f.next_retry(), Some(due + Duration::from_secs(2)), "a retry not yet due stays");
    }

    #[test]
    fn success_and_removed_rules_forget() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        f.failed(&fan(), "load".into(), "EPERM".into(), t0);
        assert_eq!(f.succeeded(&fan()).map(|x| x.attempts), Some(1));
        assert_eq!(f.succeeded(&fan()), None);
        assert!(f.failed(&fan(), "load".into(), "EPERM".into(), t0), "after a success it is new again");
        f.retain(&[]);
        assert_eq!(f.next_retry(), None);
    }

    #[test]
    fn first_line_of_a_verifier_log() {
        assert_eq!(first_line("rejected (EACCES):\n43: (62) ...\nattempt to corrupt"), "rejected (EACCES):");
        assert_eq!(first_line(""), "");
    }
}
