//! When fanlink asks again because a message may have been lost. The bus drops messages to
//! a client whose queue is full (and a local user can fill it), so fanlink never depends on
//! every message arriving:
//! - a resync (networkd's full state) that fails is retried with backoff, and the last
//!   known state is followed meanwhile;
//! - a signal from a sender that claims networkd's paths but is not the owner fanlink knows
//!   makes it ask the bus who the owner is (a lost NameOwnerChanged);
//! - evidence of loss (a giant message dropped unread, the bus reporting a limit) makes it
//!   resync;
//! - a kernel change on an underlay link that contradicts networkd's last word makes it read
//!   that link's state again, once networkd had the time to say so itself.
//!
//! Each is a due time, and the worker's poll sleeps until the earliest: with nothing in
//! doubt there is no timer at all (the idle daemon wakes 0 times). Pure, like `failures`.

use super::LinkView;
use crate::networkd::AdminState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Resync retries: quick at first (a lost reply), then at most every 5 s.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];
/// At most one owner check, and one resync for evidence of loss, this often: a forger can
/// make fanlink ask the bus once a second, never flood it or networkd.
const MIN_GAP: Duration = Duration::from_secs(1);
/// When a link whose kernel state contradicts networkd is read again, after the kernel's
/// change: networkd reports such a change within milliseconds, so the first read finds a
/// lost signal; the second covers a networkd slow under load. Then no more until the
/// kernel changes again: a lasting disagreement (an address networkd does not call
/// routable) costs two reads per change, never a poll.
const SETTLE: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

#[derive(Debug, Default)]
pub struct Doubts {
    resync_at: Option<Instant>,
    resync_failures: usize,
    last_resync: Option<Instant>,
    owner_at: Option<Instant>,
    last_owner_check: Option<Instant>,
    /// Links to read again: when, and which of the `SETTLE` rounds.
    links: HashMap<u32, (Instant, usize)>,
}

impl Doubts {
    /// The earliest due time, if anything is in doubt.
    pub fn next_due(&self) -> Option<Instant> {
        let links = self.links.values().map(|(at, _)| *at);
        [self.resync_at, self.owner_at].into_iter().flatten().chain(links).min()
    }

    /// A resync failed: the next one is due after the backoff, which is returned.
    pub fn resync_failed(&mut self, now: Instant) -> Duration {
        let delay = BACKOFF[self.resync_failures.min(BACKOFF.len() - 1)];
        self.resync_failures += 1;
        self.resync_at = Some(now + delay);
        self.last_resync = Some(now);
        delay
    }

    /// networkd's state was read in full (or networkd is gone): nothing to retry.
    pub fn resynced(&mut self, now: Instant) {
        self.resync_failures = 0;
        self.resync_at = None;
        self.last_resync = Some(now);
    }

    /// Messages may have been lost: a resync, at once unless one ran less than `MIN_GAP`
    /// ago. One already due stays (it comes after this evidence either way).
    pub fn loss_seen(&mut self, now: Instant) {
        self.resync_at.get_or_insert(after_gap(self.last_resync, now));
    }

    /// A signal claimed networkd's paths from another sender: ask who the owner is.
    pub fn owner_doubted(&mut self, now: Instant) {
        self.owner_at.get_or_insert(after_gap(self.last_owner_check, now));
    }

    /// Whether a resync is due; it is taken (the caller says how it went).
    pub fn take_resync(&mut self, now: Instant) -> bool {
        take_due(&mut self.resync_at, now)
    }

    /// Whether an owner check is due; it is taken and counts for the rate limit.
    pub fn take_owner_check(&mut self, now: Instant) -> bool {
        let due = take_due(&mut self.owner_at, now);
        if due {
            self.last_owner_check = Some(now);
        }
        due
    }

    /// The kernel just changed link `index` so that it contradicts networkd's view: read
    /// it again after the first settle time (unless a read is pending already).
    pub fn kernel_contradicts(&mut self, index: u32, now: Instant) {
        self.links.entry(index).or_insert((now + SETTLE[0], 0));
    }

    /// The kernel and networkd agree on link `index` (networkd's signal came).
    pub fn agrees(&mut self, index: u32) {
        self.links.remove(&index);
    }

    /// The links due to be read again, with their round; taken.
    pub fn take_links(&mut self, now: Instant) -> Vec<(u32, usize)> {
        let due: Vec<(u32, usize)> =
            self.links.iter().filter(|(_, (at, _))| *at <= now).map(|(i, (_, round))| (*i, *round)).collect();
        for (index, _) in &due {
            self.links.remove(index);
        }
        due
    }

    /// Read again in `round` and networkd still disagrees: once more, if rounds are left.
    pub fn still_contradicts(&mut self, index: u32, round: usize, now: Instant) {
        if let Some(delay) = SETTLE.get(round + 1) {
            self.links.insert(index, (now + *delay, round + 1));
        }
    }

    /// networkd left the bus: nothing of it to read until it is back.
    pub fn networkd_gone(&mut self, now: Instant) {
        self.resynced(now);
        self.links.clear();
    }
}

fn take_due(at: &mut Option<Instant>, now: Instant) -> bool {
    let due = at.is_some_and(|at| at <= now);
    if due {
        *at = None;
    }
    due
}

fn after_gap(last: Option<Instant>, now: Instant) -> Instant {
    last.map_or(now, |last| (last + MIN_GAP).max(now))
}

/// Whether the kernel's own state of a candidate underlay link contradicts networkd's view:
/// `ready` is up, with carrier and an address in a rule's underlay (what networkd calls
/// routable, give or take its own rules). networkd says routable and the kernel has no
/// carrier (or no address), or the kernel has both and networkd says it is not routable.
/// A link networkd let go (`linger`) is not in doubt.
pub fn contradicts(ready: bool, view: LinkView) -> bool {
    view.admin != AdminState::Linger && ready != view.oper.is_routable()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networkd::OperState;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_in_doubt_means_no_timer() {
        let mut d = Doubts::default();
        assert_eq!(d.next_due(), None);
        let t0 = Instant::now();
        d.loss_seen(t0);
        assert!(d.take_resync(t0));
        d.resynced(t0);
        d.owner_doubted(t0);
        assert!(d.take_owner_check(t0));
        d.kernel_contradicts(2, t0);
        d.agrees(2);
        assert_eq!(d.next_due(), None, "{d:?}");
    }

    #[test]
    fn a_failed_resync_is_retried_with_backoff_until_one_succeeds() {
        let mut d = Doubts::default();
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..7).map(|_| d.resync_failed(t0)).collect();
        assert_eq!(delays, [ms(100), ms(300), ms(1000), ms(2000), ms(5000), ms(5000), ms(5000)]);
        assert_eq!(d.next_due(), Some(t0 + ms(5000)));
        assert!(!d.take_resync(t0 + ms(4999)), "not before it is due");
        assert!(d.take_resync(t0 + ms(5000)));
        assert_eq!(d.next_due(), None, "taken");
        d.resynced(t0 + ms(5000));
        assert_eq!(d.resync_failed(t0 + ms(6000)), ms(100), "a success starts the backoff again");
    }

    #[test]
    fn evidence_of_loss_and_doubts_about_the_owner_are_rate_limited() {
        let mut d = Doubts::default();
        let t0 = Instant::now();
        d.owner_doubted(t0);
        d.owner_doubted(t0 + ms(1));
        assert!(d.take_owner_check(t0 + ms(1)), "the first doubt is checked at once");
        for i in 2..500 {
            d.owner_doubted(t0 + ms(i));
        }
        assert_eq!(d.next_due(), Some(t0 + ms(1001)), "a flood of doubts: one check a second");
        assert!(!d.take_owner_check(t0 + ms(1000)));
        assert!(d.take_owner_check(t0 + ms(1001)));

        d.resynced(t0);
        d.loss_seen(t0 + ms(10));
        assert_eq!(d.next_due(), Some(t0 + ms(1000)), "a resync just ran: the next one a second after it");
        d.loss_seen(t0 + ms(20));
        assert!(d.take_resync(t0 + ms(1000)));
        d.resynced(t0 + ms(1000));
        d.loss_seen(t0 + ms(3000));
        assert_eq!(d.next_due(), Some(t0 + ms(3000)), "long after: at once");
    }

    #[test]
    fn a_contradicting_link_is_read_again_twice_at_most_per_kernel_change() {
        let mut d = Doubts::default();
        let t0 = Instant::now();
        d.kernel_contradicts(2, t0);
        d.kernel_contradicts(2, t0 + ms(500));
        assert_eq!(d.next_due(), Some(t0 + SETTLE[0]), "networkd gets its time to say it");
        assert_eq!(d.take_links(t0 + ms(999)), []);
        let now = t0 + SETTLE[0];
        assert_eq!(d.take_links(now), [(2, 0)]);
        d.still_contradicts(2, 0, now);
        assert_eq!(d.next_due(), Some(now + SETTLE[1]));
        assert_eq!(d.take_links(now + SETTLE[1]), [(2, 1)]);
        d.still_contradicts(2, 1, now + SETTLE[1]);
        assert_eq!(d.next_due(), None, "no poll: the next read waits for the next kernel change");
    }

    #[test]
    fn what_contradicts_networkd() {
        let view = |oper, admin| LinkView { oper, admin };
        let routable = view(OperState::Routable, AdminState::Configured);
        let carrier = view(OperState::Carrier, AdminState::Configuring);
        assert!(contradicts(true, carrier), "the kernel has the address and carrier: a lost routable");
        assert!(contradicts(false, routable), "the kernel lost carrier: a lost no-carrier");
        assert!(!contradicts(true, routable));
        assert!(!contradicts(false, carrier));
        assert!(!contradicts(true, view(OperState::Off, AdminState::Linger)), "gone");
        assert!(contradicts(true, view(OperState::Unknown, AdminState::Configured)));
    }
}
