//! Request rate limits, like Django REST framework's throttles: per user (whatever token the
//! user sends) and per client address for anonymous requests. Each key has a token bucket
//! that holds the whole allowance (`count` requests) and refills it evenly over `per`, so a
//! client within its rate is never refused, and a burst up to the allowance is let through.
//!
//! The table of buckets is bounded. A key whose bucket is full again is the same as a key
//! never seen, so such buckets are dropped to make room; when every bucket is in use, keys
//! not in the table share one overflow bucket (the same allowance), so a flood of new
//! addresses is limited as one client instead of unlimited.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept per limiter; past it, new keys share the overflow bucket.
pub const RATE_LIMIT_KEYS_MAX: usize = 100_000;

/// `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// `6000/min`, `10/s`, `100000/day`; `off` (no limit) is `None`.
    pub fn parse(s: &str) -> Result<Option<Rate>, String> {
        if s == "off" {
            return Ok(None);
        }
        let invalid = || format!("{s:?} is not a rate such as 6000/min, 10/s, 1000/hour or off");
        let (count, unit) = s.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.parse().ok().filter(|c| *c > 0).ok_or_else(invalid)?;
        let secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3_600,
            "d" | "day" => 86_400,
            _ => return Err(invalid()),
        };
        Ok(Some(Rate {
            count,
            per: Duration::from_secs(secs),
        }))
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Requests allowed now, up to the rate's count.
    tokens: f64,
    at: Instant,
}

/// One limiter: a rate and the buckets of the keys it has seen.
pub struct RateLimiter<K> {
    rate: Option<Rate>,
    table: Mutex<Table<K>>,
}

struct Table<K> {
    buckets: HashMap<K, Bucket>,
    overflow: Option<Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: Option<Rate>) -> RateLimiter<K> {
        RateLimiter {
            rate,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                overflow: None,
            }),
        }
    }

    /// Takes one request of `key`'s allowance, or says in how many whole seconds the next one
    /// is allowed.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let capacity = f64::from(rate.count);
        let per_token_s = rate.per.as_secs_f64() / capacity;
        let refill = |b: &mut Bucket| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed / per_token_s).min(capacity);
            b.at = now;
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.buckets.contains_key(key) && table.buckets.len() >= RATE_LIMIT_KEYS_MAX {
            table.buckets.retain(|_, b| {
                refill(b);
                b.tokens < capacity
            });
        }
        let fresh = Bucket {
            tokens: capacity,
            at: now,
        };
        let bucket = if table.buckets.contains_key(key) || table.buckets.len() < RATE_LIMIT_KEYS_MAX
        {
            table.buckets.entry(key.clone()).or_insert(fresh)
        } else {
            table.overflow.get_or_insert(fresh)
        };
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = (1.0 - bucket.tokens) * per_token_s;
        Err((wait_s.ceil() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_like_django_rest_framework_and_off_disables() {
        assert_eq!(
            Rate::parse("6000/min").unwrap(),
            Some(Rate {
                count: 6000,
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(
            Rate::parse("10/s").unwrap().unwrap().per,
            Duration::from_secs(1)
        );
        assert_eq!(Rate::parse("2/day").unwrap().unwrap().per.as_secs(), 86_400);
        assert_eq!(Rate::parse("off").unwrap(), None);
        for bad in ["", "0/min", "-1/min", "10", "10/week", "ten/min", "10/ min"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_up_to_the_allowance_passes_then_the_rate_refills() {
        let limiter = RateLimiter::new(Rate::parse("3/min").unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(&1u64, t0), Ok(()));
        }
        // The fourth waits for one token: 20 s.
        assert_eq!(limiter.check(&1u64, t0), Err(20));
        // Another key has its own allowance.
        assert_eq!(limiter.check(&2u64, t0), Ok(()));
        // 20 s later one more is allowed, and only one.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(limiter.check(&1u64, t1), Ok(()));
        assert!(limiter.check(&1u64, t1).is_err());
    }

    #[test]
    fn a_client_within_its_rate_is_never_refused() {
        // 10/s, one request every 100 ms for a minute: all allowed.
        let limiter = RateLimiter::new(Rate::parse("10/s").unwrap());
        let t0 = Instant::now();
        for i in 0..600u64 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(limiter.check(&7u64, at), Ok(()), "request {i}");
        }
    }

    #[test]
    fn off_never_refuses() {
        let limiter: RateLimiter<u64> = RateLimiter::new(None);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(limiter.check(&1, t0), Ok(()));
        }
    }
}
