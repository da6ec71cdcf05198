//! How the loops that talk to the datastore pace themselves: capped exponential backoff with
//! jitter for every retry (a watch listing again, a pod record written again), so nodes that
//! lost the datastore together do not come back in step; a bound on how long a follower waits
//! on a quiet stream ([`Quiet`]: a watch silent past it is dead, even when its connection
//! looks open); and the [`Pulse`] a follower's loop gives each time round, retries included,
//! so that a loop that stopped (a hang in our own code) can be told from a datastore outage.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Delays that double from a first one up to a cap, each jittered by ±25 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    cap: Duration,
}

impl Default for Backoff {
    /// 200 ms, doubling up to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Starting at `first`, doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            next: first,
            first,
            cap,
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
    }
}

/// A follower loop's heartbeat, shared by its clones: the loop holds a [`PulseGuard`] while it
/// runs and [`Pulse::beat`]s each time round (a message, a retry, a bounded wait that ran
/// out); a health check asks [`Pulse::silent_for`]. A loop that is not running (not started
/// yet, or ended: its consumer follows again) is not silent.
#[derive(Debug, Clone, Default)]
pub struct Pulse(Arc<Mutex<PulseState>>);

#[derive(Debug, Default)]
struct PulseState {
    /// Loops running on this pulse.
    running: usize,
    /// Their last beat.
    last: Option<Instant>,
}

/// Held by a loop for as long as it runs on a [`Pulse`]; dropping it (the loop ended, or
/// panicked) takes it off.
#[derive(Debug)]
pub struct PulseGuard(Pulse);

impl Drop for PulseGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.running = state.running.saturating_sub(1);
    }
}

impl Pulse {
    fn lock(&self) -> std::sync::MutexGuard<'_, PulseState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A loop starts running on this pulse (and beats).
    pub fn start(&self) -> PulseGuard {
        let mut state = self.lock();
        state.running += 1;
        state.last = Some(Instant::now());
        PulseGuard(self.clone())
    }

    /// The loop came round.
    pub fn beat(&self) {
        self.lock().last = Some(Instant::now());
    }

    /// How long since the last beat, while a loop runs; `None` when none does.
    pub fn silent_for(&self) -> Option<Duration> {
        let state = self.lock();
        match (state.running, state.last) {
            (0, _) | (_, None) => None,
            (_, Some(last)) => Some(last.elapsed()),
        }
    }
}

/// How a follower waits on a stream that may go quiet: it wakes every `wake` of silence (to
/// beat its [`Pulse`] and, where the source needs asking, to ask for a progress report) and
/// takes a stream silent for `dead` as dead (a connection that hangs rather than breaks: a
/// blackholed datastore, a half-open TCP connection), to be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// How long the follower waits before it wakes.
    pub wake: Duration,
    /// How long a stream may stay silent before it counts as dead.
    pub dead: Duration,
}

/// What [`Quiet::next`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard<T> {
    /// The stream said something.
    Message(T),
    /// Nothing for [`Silence::wake`]: time to beat (and ask).
    Woke,
    /// Nothing for [`Silence::dead`] (how long it has been): the stream is dead.
    Dead(Duration),
}

/// The silence of one stream, measured from its last message (or its start).
#[derive(Debug)]
pub struct Quiet {
    silence: Silence,
    heard: Instant,
}

impl Quiet {
    /// A stream that just started.
    pub fn new(silence: Silence) -> Self {
        Self {
            silence,
            heard: Instant::now(),
        }
    }

    /// Waits for `message` (the stream's next message), at most until it is time to wake or
    /// the stream counts as dead. A `message` that does not complete is dropped, so it must
    /// be cancel-safe (a stream's `next`).
    pub async fn next<T>(&mut self, message: impl Future<Output = T>) -> Heard<T> {
        let dead_at = self.heard + self.silence.dead;
        let wake_at = (Instant::now() + self.silence.wake).min(dead_at);
        tokio::select! {
            m = message => {
                self.heard = Instant::now();
                Heard::Message(m)
            }
            () = tokio::time::sleep_until(wake_at) => {
                let quiet = self.heard.elapsed();
                if quiet >= self.silence.dead {
                    Heard::Dead(quiet)
                } else {
                    Heard::Woke
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(150) && first <= Duration::from_millis(250));
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_millis(7500) && capped <= Duration::from_millis(12500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250));
    }

    const SILENCE: Silence = Silence {
        wake: Duration::from_secs(10),
        dead: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_wakes_its_follower_then_counts_as_dead() {
        let mut quiet = Quiet::new(SILENCE);
        let start = Instant::now();
        let silent = || std::future::pending::<()>();
        assert_eq!(quiet.next(silent()).await, Heard::Woke);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(quiet.next(silent()).await, Heard::Woke);
        assert_eq!(quiet.next(silent()).await, Heard::Dead(SILENCE.dead));
        assert_eq!(start.elapsed(), SILENCE.dead);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_restarts_the_silence() {
        let mut quiet = Quiet::new(SILENCE);
        assert_eq!(quiet.next(silent_for(25)).await, Heard::Woke);
        assert_eq!(quiet.next(silent_for(15)).await, Heard::Woke);
        // 25 s in, the message arrives: 30 s of silence are counted from it, not from the start.
        assert_eq!(quiet.next(silent_for(5)).await, Heard::Message(()));
        let heard = Instant::now();
        let mut woke = 0;
        loop {
            match quiet.next(std::future::pending::<()>()).await {
                Heard::Woke => woke += 1,
                Heard::Dead(quiet) => {
                    assert_eq!(quiet, SILENCE.dead);
                    break;
                }
                Heard::Message(()) => unreachable!(),
            }
        }
        assert_eq!((woke, heard.elapsed()), (2, SILENCE.dead));
    }

    /// A message that comes after `secs` (measured from the first poll).
    fn silent_for(secs: u64) -> impl Future<Output = ()> {
        tokio::time::sleep(Duration::from_secs(secs))
    }

    #[tokio::test(start_paused = true)]
    async fn a_pulse_is_silent_only_while_a_loop_runs() {
        let pulse = Pulse::default();
        assert_eq!(pulse.silent_for(), None, "no loop yet");
        let guard = pulse.start();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(pulse.silent_for(), Some(Duration::from_secs(7)));
        pulse.clone().beat();
        assert_eq!(pulse.silent_for(), Some(Duration::ZERO));
        let second = pulse.start();
        drop(guard);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            pulse.silent_for(),
            Some(Duration::from_secs(3)),
            "one still runs"
        );
        drop(second);
        assert_eq!(pulse.silent_for(), None, "the loops ended");
    }
}
