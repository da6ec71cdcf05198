//! Cookie replies under a handshake flood. While the device is under load, every handshake
//! message without a valid cookie (mac2) is answered with a cookie reply, and that reply is
//! the dearest part of refusing it: a send through the whole network stack, to an address
//! that may never read it. A real peer needs one reply per handshake attempt (it retries every
//! 5 s); a flooder asks for thousands a second. So each sender (IP and port) may draw at most
//! [`PER_SENDER_RATE`] replies a second (bursts of [`PER_SENDER_BURST`]), and all senders but
//! the peers' lease endpoints together at most [`TOTAL_RATE`]; past that, the message goes
//! unanswered. A handshake message that carries no cookie at all (mac2 zero, see
//! [`cookieless_handshake`]) from a sender past its share is dropped before any MAC is
//! computed: under load it could only ever earn a reply. A sender spends its share only on
//! cookie replies, which only a device under load sends, and it refills within
//! `PER_SENDER_BURST / PER_SENDER_RATE` (2 s) of the flood's end.
//!
//! Pure: the caller passes the time; the receive thread owns the one [`Replies`].

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Cookie replies a second one sender may draw, sustained.
pub const PER_SENDER_RATE: f64 = 5.0;
/// Cookie replies one sender may draw at once.
pub const PER_SENDER_BURST: f64 = 10.0;
/// Cookie replies a second all senders but the peers' lease endpoints may draw together
/// (also their burst).
pub const TOTAL_RATE: f64 = 1000.0;
/// Senders tracked at once; past it, a new sender that is not a peer's endpoint gets no
/// reply until idle senders are forgotten (at most once a second).
pub const MAX_SENDERS: usize = 4096;

/// WireGuard message types and sizes that carry mac1 and mac2.
const HANDSHAKE_INIT: (u8, usize) = (1, 148);
const HANDSHAKE_RESPONSE: (u8, usize) = (2, 92);

/// Whether `datagram` is a handshake initiation or response whose mac2 is all zero: its
/// sender holds no cookie, so while the device is under load it can only get a cookie
/// reply. Looks at the type, the length and the last 16 bytes only.
pub fn cookieless_handshake(datagram: &[u8]) -> bool {
    let Some(header) = datagram.get(..4) else {
        return false;
    };
    let shaped = [HANDSHAKE_INIT, HANDSHAKE_RESPONSE]
        .iter()
        .any(|&(kind, len)| header == [kind, 0, 0, 0] && datagram.len() == len);
    shaped && datagram[datagram.len() - 16..].iter().all(|&b| b == 0)
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    /// The tokens at `now`.
    fn level(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }

    /// Whether a token is there at `now`; takes it if `take`.
    fn draw(&mut self, rate: f64, burst: f64, now: Instant, take: bool) -> bool {
        let level = self.level(rate, burst, now);
        if level < 1.0 {
            return false;
        }
        if take {
            self.tokens = level - 1.0;
            self.at = now;
        }
        true
    }
}

/// The cookie reply budget of every sender (see the module doc).
#[derive(Debug)]
pub struct Replies {
    senders: HashMap<SocketAddrV4, Bucket>,
    total: Bucket,
    swept: Instant,
}

impl Replies {
    /// Every budget full at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            senders: HashMap::new(),
            total: Bucket::full(TOTAL_RATE, now),
            swept: now,
        }
    }

    /// Whether `from` may get a cookie reply now, and if so, it is counted as sent. `peer`:
    /// `from` is a peer's lease endpoint (exempt from the total).
    pub fn allow(&mut self, from: SocketAddrV4, peer: bool, now: Instant) -> bool {
        self.draw(from, peer, now, true)
    }

    /// Whether [`Replies::allow`] would refuse `from` now (nothing is counted).
    pub fn exhausted(&mut self, from: SocketAddrV4, peer: bool, now: Instant) -> bool {
        !self.draw(from, peer, now, false)
    }

    /// Senders tracked now.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    fn draw(&mut self, from: SocketAddrV4, peer: bool, now: Instant, take: bool) -> bool {
        if !peer && !self.total.draw(TOTAL_RATE, TOTAL_RATE, now, false) {
            return false;
        }
        if !self.senders.contains_key(&from) && self.senders.len() >= MAX_SENDERS && !peer {
            self.sweep(now);
            if self.senders.len() >= MAX_SENDERS {
                return false;
            }
        }
        let allowed = match self.senders.get_mut(&from) {
            Some(bucket) => bucket.draw(PER_SENDER_RATE, PER_SENDER_BURST, now, take),
            None if take => self
                .senders
                .entry(from)
                .or_insert(Bucket::full(PER_SENDER_BURST, now))
                .draw(PER_SENDER_RATE, PER_SENDER_BURST, now, true),
            // A sender not seen yet has a full budget.
            None => true,
        };
        if allowed && take && !peer {
            self.total.draw(TOTAL_RATE, TOTAL_RATE, now, true);
        }
        allowed
    }

    /// Forgets the senders whose budget has refilled (they are as good as new), at most
    /// once a second.
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.swept) < Duration::from_secs(1) {
            return;
        }
        self.swept = now;
        self.senders
            .retain(|_, b| b.level(PER_SENDER_RATE, PER_SENDER_BURST, now) < PER_SENDER_BURST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new([172, 30, 0, 11].into(), port)
    }

    #[test]
    fn a_flooding_sender_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut replies = Replies::new(t0);
        let flooder = sender(40000);
        let peer = sender(51820);
        // 30k messages over one second, evenly spread.
        let at = |i: u64| t0 + Duration::from_micros(i * 33);
        let sent = (0..30_000)
            .filter(|&i| replies.allow(flooder, false, at(i)))
            .count() as f64;
        assert!(
            (PER_SENDER_BURST..=PER_SENDER_BURST + PER_SENDER_RATE + 1.0).contains(&sent),
            "{sent} replies"
        );
        // Just after the last message, its budget is spent.
        let t1 = at(30_000);
        assert!(replies.exhausted(flooder, false, t1));
        // The real peer on the same address, another port, is untouched by the flood.
        assert!(!replies.exhausted(peer, true, t1));
        assert!(replies.allow(peer, true, t1));
        // Asking does not spend.
        let t2 = t1 + Duration::from_millis(200);
        assert!(!replies.exhausted(flooder, false, t2));
        assert!(!replies.exhausted(flooder, false, t2));
        assert!(replies.allow(flooder, false, t2));
        assert!(replies.exhausted(flooder, false, t2));
    }

    #[test]
    fn many_senders_share_a_total_that_spares_the_peers() {
        let t0 = Instant::now();
        let mut replies = Replies::new(t0);
        let sent = (0..5000u16)
            .filter(|&port| replies.allow(sender(10_000 + port), false, t0))
            .count();
        assert_eq!(sent as f64, TOTAL_RATE);
        assert!(replies.exhausted(sender(9999), false, t0));
        assert!(replies.allow(sender(51820), true, t0), "a peer's endpoint");
        assert!(replies.allow(sender(9999), false, t0 + Duration::from_millis(10)));
    }

    #[test]
    fn the_sender_table_is_bounded_and_forgets_idle_senders() {
        let t0 = Instant::now();
        let mut replies = Replies::new(t0);
        let now = t0;
        // Peers' endpoints are tracked whatever the count: here they fill the table.
        for port in 0..MAX_SENDERS as u16 {
            assert!(replies.allow(sender(port), true, now));
        }
        assert_eq!(replies.senders(), MAX_SENDERS);
        assert!(replies.exhausted(sender(60000), false, now), "table full");
        assert!(!replies.allow(sender(60000), false, now), "table full");
        assert!(
            replies.allow(sender(51820), true, now),
            "peers still get in"
        );
        // Two seconds on, every budget has refilled: the table is swept for the newcomer.
        let later = now + Duration::from_secs(2);
        assert!(replies.allow(sender(60000), false, later));
        assert!(replies.senders() <= 2, "{}", replies.senders());
    }

    #[test]
    fn only_cookieless_handshakes_are_recognised() {
        let mut init = vec![0u8; 148];
        init[0] = 1;
        init[40] = 0xa5;
        assert!(cookieless_handshake(&init));
        init[140] = 1;
        assert!(!cookieless_handshake(&init), "carries a mac2");
        let mut response = vec![0u8; 92];
        response[0] = 2;
        assert!(cookieless_handshake(&response));
        assert!(!cookieless_handshake(&response[..91]));
        let mut data = vec![0u8; 148];
        data[0] = 4;
        assert!(!cookieless_handshake(&data), "a data message");
        init[140] = 0;
        init[1] = 1;
        assert!(!cookieless_handshake(&init), "reserved bytes set");
        assert!(!cookieless_handshake(&[1, 0]));
    }
}
