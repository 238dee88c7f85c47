//! The per-connection push rate limit: a token bucket. A message over the
//! rate is answered with an error; a client that keeps sending after
//! `burst` refusals in a row is disconnected, so a flood costs one decode
//! per message and then nothing.

use std::time::Instant;

/// Messages per second a connection may send, and how many at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PushRate {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages allowed at once after a quiet period; also how many refusals
    /// in a row end the connection.
    pub burst: u32,
}

/// What to do with one incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Over the rate: answer with an error, keep the connection.
    Refuse,
    /// Refused `burst` times in a row: close the connection.
    Abuse,
}

/// One connection's bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: PushRate,
    tokens: f64,
    last: Instant,
    refused_in_row: u32,
}

impl Bucket {
    pub(crate) fn new(rate: PushRate, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate.burst),
            last: now,
            refused_in_row: 0,
        }
    }

    /// Whether the bucket has refilled to its burst by `now`: forgetting it
    /// then changes nothing.
    pub(crate) fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.tokens + elapsed.as_secs_f64() * self.rate.per_second >= f64::from(self.rate.burst)
    }

    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate.per_second)
            .min(f64::from(self.rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_row += 1;
        if self.refused_in_row > self.rate.burst {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long an empty bucket takes to refill.
    fn refill_time(rate: PushRate) -> Duration {
        Duration::from_secs_f64(f64::from(rate.burst) / rate.per_second)
    }

    const RATE: PushRate = PushRate {
        per_second: 10.0,
        burst: 5,
    };

    #[test]
    fn a_burst_then_the_rate_then_refusals_then_abuse() {
        let t0 = Instant::now();
        let mut b = Bucket::new(RATE, t0);
        for _ in 0..5 {
            assert_eq!(b.take(t0), Verdict::Allow);
        }
        for _ in 0..5 {
            assert_eq!(b.take(t0), Verdict::Refuse);
        }
        // 100 ms later one more token: allowed, and the refusal run resets.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(t1), Verdict::Allow);
        for _ in 0..5 {
            assert_eq!(b.take(t1), Verdict::Refuse);
        }
        assert_eq!(b.take(t1), Verdict::Abuse);
    }

    #[test]
    fn an_idle_bucket_refills_to_its_burst_only() {
        let t0 = Instant::now();
        let mut b = Bucket::new(RATE, t0);
        for _ in 0..5 {
            b.take(t0);
        }
        let later = t0 + refill_time(RATE) * 10;
        for _ in 0..5 {
            assert_eq!(b.take(later), Verdict::Allow);
        }
        assert_eq!(b.take(later), Verdict::Refuse);
    }
}
