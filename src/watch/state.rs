//! The health state of one target, as a pure state machine driven by probe results:
//!
//! ```text
//!   Up ──fail──▶ Suspect(n) ──n = failure_threshold──▶ Down
//!   ▲               │ ok                                 │ ok
//!   │               ▼                                    ▼
//!   └──────────── Up ◀──n = recovery_threshold── Recovering(n) ──fail──▶ Down
//! ```
//!
//! Only `Down` and `Up` are acted on. A target that changes between them too often (more than
//! `flap.transitions` times within `flap.window`) is held down for `flap.hold_down`: it stays
//! Down whatever the probes say, and then needs `recovery_threshold` successes again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::FlapConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Failing, not yet Down: consecutive failures so far.
    Suspect(u32),
    Down,
    /// Succeeding after Down, not yet Up: consecutive successes so far.
    Recovering(u32),
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect(_) => "suspect",
            Health::Down => "down",
            Health::Recovering(_) => "recovering",
        }
    }

    /// Whether the target belongs in its load balancer (Down and Recovering do not).
    pub fn is_serving(self) -> bool {
        matches!(self, Health::Up | Health::Suspect(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub failure: u32,
    pub recovery: u32,
}

/// What one probe result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The target went Down: act (drain, alert).
    WentDown,
    /// The target came back Up: act (re-enable, resolve the alert).
    WentUp,
    /// The target flapped and is held down until the hold-down ends (alert).
    HeldDown { until: Instant },
}

#[derive(Debug, Clone)]
pub struct Tracker {
    health: Health,
    thresholds: Thresholds,
    flap: FlapConfig,
    /// Times of recent Up/Down changes.
    changes: VecDeque<Instant>,
    held_until: Option<Instant>,
    /// Consecutive failures (for the metric; also counted inside Suspect).
    failures: u32,
}

impl Tracker {
    /// A new target counts as Up (it is a member until shown otherwise).
    pub fn new(thresholds: Thresholds, flap: FlapConfig) -> Self {
        Self {
            health: Health::Up,
            thresholds: Thresholds {
                failure: thresholds.failure.max(1),
                recovery: thresholds.recovery.max(1),
            },
            flap,
            changes: VecDeque::new(),
            held_until: None,
            failures: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn held_until(&self) -> Option<Instant> {
        self.held_until
    }

    /// Feed one probe result observed at `now`.
    pub fn observe(&mut self, ok: bool, now: Instant) -> Option<Event> {
        self.failures = if ok { 0 } else { self.failures.saturating_add(1) };
        if self.held_until.is_some_and(|until| now >= until) {
            self.held_until = None;
        }
        let Thresholds { failure, recovery } = self.thresholds;
        let (next, event) = match (self.health, ok) {
            (Health::Up, true) => (Health::Up, None),
            (Health::Up, false) | (Health::Suspect(_), false) => {
                let n = match self.health {
                    Health::Suspect(n) => n + 1,
                    _ => 1,
                };
                if n >= failure { (Health::Down, Some(Event::WentDown)) } else { (Health::Suspect(n), None) }
            }
            (Health::Suspect(_), true) => (Health::Up, None),
            (Health::Down, false) | (Health::Recovering(_), false) => (Health::Down, None),
            (Health::Down, true) | (Health::Recovering(_), true) => {
                if self.held_until.is_some() {
                    (Health::Down, None)
                } else {
                    let n = match self.health {
                        Health::Recovering(n) => n + 1,
                        _ => 1,
                    };
                    if n >= recovery {
                        (Health::Up, Some(Event::WentUp))
                    } else {
                        (Health::Recovering(n), None)
                    }
                }
            }
        };
        self.health = next;
        if event.is_some() {
            self.changes.push_back(now);
            while self.changes.front().is_some_and(|t| now.duration_since(*t) > self.flap.window) {
                self.changes.pop_front();
            }
            if self.changes.len() > self.flap.transitions && event == Some(Event::WentUp) {
                // Flapping: stay down for the hold-down instead of coming back.
                let until = now + self.flap.hold_down;
                self.held_until = Some(until);
                self.health = Health::Down;
                self.changes.clear();
                return Some(Event::HeldDown { until });
            }
        }
        event
    }
}

/// Self-distrust: a loop whose ticks arrive late (the process stalled, the clock jumped) does
/// not trust what it sees and stops acting until enough ticks in a row are on time again.
#[derive(Debug, Clone)]
pub struct Tilt {
    tolerance: Duration,
    needed: u32,
    on_time: u32,
    tilted: bool,
}

impl Tilt {
    pub fn new(tolerance: Duration, on_time_ticks: u32) -> Self {
        Self { tolerance, needed: on_time_ticks.max(1), on_time: 0, tilted: false }
    }

    /// A tick that was due at `due` ran at `ran`; returns whether acting is allowed now.
    pub fn tick(&mut self, due: Instant, ran: Instant) -> bool {
        if ran.saturating_duration_since(due) > self.tolerance {
            self.tilted = true;
            self.on_time = 0;
        } else if self.tilted {
            self.on_time += 1;
            if self.on_time >= self.needed {
                self.tilted = false;
            }
        }
        !self.tilted
    }

    pub fn is_tilted(&self) -> bool {
        self.tilted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAP: FlapConfig =
        FlapConfig { transitions: 4, window: Duration::from_secs(120), hold_down: Duration::from_secs(300) };

    fn tracker() -> Tracker {
        Tracker::new(Thresholds { failure: 3, recovery: 2 }, FLAP)
    }

    /// Feed `results` one second apart; the health after each and the events.
    fn run(t: &mut Tracker, start: Instant, results: &str) -> (Vec<Health>, Vec<(usize, Event)>) {
        let mut healths = Vec::new();
        let mut events = Vec::new();
        for (i, c) in results.chars().enumerate() {
            if let Some(e) = t.observe(c == '+', start + Duration::from_secs(i as u64)) {
                events.push((i, e));
            }
            healths.push(t.health());
        }
        (healths, events)
    }

    #[test]
    fn every_transition() {
        use Health::*;
        let start = Instant::now();
        let cases: &[(&str, &[Health], &[usize])] = &[
            // (probe results, health after each, indexes that fire an event)
            ("+", &[Up], &[]),
            ("-", &[Suspect(1)], &[]),
            ("--+", &[Suspect(1), Suspect(2), Up], &[]),
            ("---", &[Suspect(1), Suspect(2), Down], &[2]),
            ("----", &[Suspect(1), Suspect(2), Down, Down], &[2]),
            ("---+", &[Suspect(1), Suspect(2), Down, Recovering(1)], &[2]),
            ("---+-", &[Suspect(1), Suspect(2), Down, Recovering(1), Down], &[2]),
            ("---++", &[Suspect(1), Suspect(2), Down, Recovering(1), Up], &[2, 4]),
            ("-+-+-+", &[Suspect(1), Up, Suspect(1), Up, Suspect(1), Up], &[]),
        ];
        for (results, want, fired) in cases {
            let mut t = tracker();
            let (got, events) = run(&mut t, start, results);
            assert_eq!(&got, want, "{results}");
            assert_eq!(events.iter().map(|(i, _)| *i).collect::<Vec<_>>(), *fired, "{results}: {events:?}");
        }
    }

    #[test]
    fn down_fires_once_and_up_fires_once() {
        let mut t = tracker();
        let (_, events) = run(&mut t, Instant::now(), "------++++++");
        assert_eq!(events.iter().map(|(_, e)| *e).collect::<Vec<_>>(), [Event::WentDown, Event::WentUp]);
    }

    #[test]
    fn a_flapping_target_is_held_down_then_needs_a_full_recovery() {
        let mut t = tracker();
        let start = Instant::now();
        // Down, up, down, up (4 changes), down (5th) ... the 6th change (up) is refused.
        let (_, events) = run(&mut t, start, "---++---++---++");
        let kinds: Vec<Event> = events.iter().map(|(_, e)| *e).collect();
        assert_eq!(
            kinds[..5],
            [Event::WentDown, Event::WentUp, Event::WentDown, Event::WentUp, Event::WentDown]
        );
        let Event::HeldDown { until } = kinds[5] else { panic!("{kinds:?}") };
        assert_eq!(until, start + Duration::from_secs(14) + FLAP.hold_down);
        assert_eq!(t.health(), Health::Down);
        // Successes during the hold-down change nothing.
        let (healths, events) = run(&mut t, start + Duration::from_secs(20), "++++");
        assert!(events.is_empty() && healths.iter().all(|h| *h == Health::Down), "{healths:?}");
        // After it: the usual recovery.
        let (healths, events) = run(&mut t, until, "++");
        assert_eq!(healths, [Health::Recovering(1), Health::Up]);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn changes_outside_the_window_do_not_count_as_flapping() {
        let mut t = tracker();
        let mut at = Instant::now();
        for _ in 0..5 {
            let (_, events) = run(&mut t, at, "---++");
            assert!(events.iter().all(|(_, e)| !matches!(e, Event::HeldDown { .. })), "{events:?}");
            at += Duration::from_secs(200);
        }
    }

    #[test]
    fn a_late_tick_tilts_until_enough_ticks_are_on_time() {
        let mut tilt = Tilt::new(Duration::from_millis(500), 3);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(tilt.tick(t0, t0 + Duration::from_millis(100)));
        assert!(!tilt.tick(t0 + s, t0 + s + Duration::from_secs(2)), "2 s late: stop acting");
        assert!(!tilt.tick(t0 + 2 * s, t0 + 2 * s));
        assert!(!tilt.tick(t0 + 3 * s, t0 + 3 * s));
        assert!(!tilt.tick(t0 + 4 * s, t0 + 4 * s + s), "late again: the count restarts");
        for i in 5..7 {
            assert!(!tilt.tick(t0 + i * s, t0 + i * s));
        }
        assert!(tilt.tick(t0 + 7 * s, t0 + 7 * s), "three on time in a row");
    }
}
