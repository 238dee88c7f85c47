//! Why Redis cannot be used, in the terms an operator acts on: a wrong
//! password, an ACL that denies a command, a name that does not resolve, a
//! refused connection, a TLS failure. Every failed connect or command of
//! the bus is reported here: counted per cause (`/metrics`), kept as the
//! last failure (`/readyz`'s body), and logged with its cause and address,
//! at most once per [`LOG_EVERY`] for a repeating failure, so a pod that
//! retries every second does not flood its log.

use crate::Error;
use redis::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A repeating failure is logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What went wrong, coarsely: the label of `gateway_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Wrong user or password, or none given where one is required
    /// (`WRONGPASS`, `NOAUTH`).
    Auth,
    /// The user's ACL denies a command, key or channel (`NOPERM`).
    Denied,
    /// The host name does not resolve.
    Dns,
    /// Nothing listens at the address.
    Refused,
    /// The TLS handshake failed: an untrusted or mismatched certificate,
    /// or TLS spoken to a plain port (or the reverse).
    Tls,
    /// No answer in time.
    Timeout,
    /// The server is a replica (`READONLY`): a failover moved the master.
    ReadOnly,
    /// Anything else: a dropped connection, an error answer.
    Other,
}

impl Cause {
    /// Every cause, in label order.
    pub const ALL: [Cause; 8] = [
        Cause::Auth,
        Cause::Denied,
        Cause::Dns,
        Cause::Refused,
        Cause::Tls,
        Cause::Timeout,
        Cause::ReadOnly,
        Cause::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Auth => "auth",
            Cause::Denied => "acl",
            Cause::Dns => "dns",
            Cause::Refused => "refused",
            Cause::Tls => "tls",
            Cause::Timeout => "timeout",
            Cause::ReadOnly => "readonly",
            Cause::Other => "other",
        }
    }

    /// Classifies a failure of the bus.
    pub fn of(e: &Error) -> Cause {
        match e {
            Error::Redis(r) => Cause::of_redis(r),
            Error::Unavailable(m) => Cause::of_text(m),
            Error::Config(_) => Cause::Other,
        }
    }

    fn of_redis(e: &redis::RedisError) -> Cause {
        match e.code() {
            Some("WRONGPASS" | "NOAUTH") => return Cause::Auth,
            Some("NOPERM") => return Cause::Denied,
            Some("READONLY") => return Cause::ReadOnly,
            _ => {}
        }
        if e.kind() == ErrorKind::AuthenticationFailed {
            return Cause::Auth;
        }
        if e.is_connection_refusal() {
            return Cause::Refused;
        }
        if e.is_timeout() {
            return Cause::Timeout;
        }
        Cause::of_text(&format!("{e} {e:?}"))
    }

    fn of_text(text: &str) -> Cause {
        let t = text.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| t.contains(w));
        // Phrases, not the bare word: an address such as `auth-cache:6379`
        // in a refused connect's text is no authentication failure.
        if any(&[
            "wrongpass",
            "noauth",
            "invalid username-password",
            "authentication",
            "called without any password",
        ]) {
            Cause::Auth
        } else if any(&["noperm", "no permissions"]) {
            Cause::Denied
        } else if any(&[
            "failed to lookup address",
            "name or service not known",
            "no address associated",
            "temporary failure in name resolution",
            "nodename nor servname",
        ]) {
            Cause::Dns
        } else if any(&["connection refused"]) {
            Cause::Refused
        } else if any(&[
            "certificate",
            "tls",
            "handshake",
            "unknownissuer",
            "peer sent",
        ]) {
            Cause::Tls
        } else if any(&["timed out", "timeout"]) {
            Cause::Timeout
        } else if any(&["readonly"]) {
            Cause::ReadOnly
        } else {
            Cause::Other
        }
    }
}

/// One failure, as `/readyz` shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Its cause.
    pub cause: Cause,
    /// What the bus was doing: `subscriber`, `publish`, `presence`, ...
    pub what: &'static str,
    /// Where, without secrets.
    pub address: String,
    /// The error, as Redis or the system gave it.
    pub message: String,
    /// When, in [`crate::clock_ms`] milliseconds.
    pub at_ms: u64,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) at {}: {}",
            self.what,
            self.cause.as_str(),
            self.address,
            self.message
        )
    }
}

/// Failures of one bus.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Where the bus connects, without secrets.
    address: std::sync::OnceLock<String>,
    counts: [AtomicU64; Cause::ALL.len()],
    last: Mutex<Option<Failure>>,
    log: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// The last logged failure's cause and message, and when.
    logged: Option<(Cause, String, Instant)>,
    /// Failures not logged since.
    suppressed: u64,
}

impl Health {
    /// Names the bus's server in every failure; set once, at start.
    pub(crate) fn set_address(&self, address: &str) {
        let _ = self.address.set(address.to_owned());
    }

    /// Counts, keeps and (rate limited) logs a failure.
    pub(crate) fn failed(&self, what: &'static str, e: &Error) {
        let address = self.address.get().map_or("redis", String::as_str);
        let cause = Cause::of(e);
        let message = e.to_string();
        if let Some(i) = Cause::ALL.iter().position(|c| *c == cause) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut log) = self.log.lock() {
            let now = Instant::now();
            let repeat = log.logged.as_ref().is_some_and(|(c, m, at)| {
                *c == cause && *m == message && now.duration_since(*at) < LOG_EVERY
            });
            if repeat {
                log.suppressed += 1;
            } else {
                tracing::warn!(
                    what = %what,
                    cause = %cause.as_str(),
                    address = %address,
                    error = %message,
                    repeated = log.suppressed,
                    "redis failure"
                );
                log.logged = Some((cause, message.clone(), now));
                log.suppressed = 0;
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Failure {
                cause,
                what,
                address: address.to_owned(),
                message,
                at_ms: crate::clock_ms(),
            });
        }
    }

    /// Failures per cause since start, in [`Cause::ALL`]'s order.
    pub(crate) fn counts(&self) -> [(Cause, u64); Cause::ALL.len()] {
        let mut out = [(Cause::Other, 0); Cause::ALL.len()];
        for (i, c) in Cause::ALL.iter().enumerate() {
            out[i] = (*c, self.counts[i].load(Ordering::Relaxed));
        }
        out
    }

    pub(crate) fn last(&self) -> Option<Failure> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(text: &str) -> Cause {
        Cause::of(&Error::Unavailable(text.into()))
    }

    #[test]
    fn causes_read_from_messages() {
        assert_eq!(
            cause("failed to lookup address information: Name or service not known"),
            Cause::Dns
        );
        assert_eq!(cause("Connection refused (os error 111)"), Cause::Refused);
        assert_eq!(cause("connect timed out"), Cause::Timeout);
        assert_eq!(cause("invalid peer certificate: UnknownIssuer"), Cause::Tls);
        assert_eq!(cause("something else"), Cause::Other);
        assert_eq!(
            cause("sentinel auth-cache:26379: Connection refused (os error 111)"),
            Cause::Refused
        );
        assert_eq!(
            cause("ERR AUTH <password> called without any password configured"),
            Cause::Auth
        );
    }

    #[test]
    fn server_codes_decide() {
        let e = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert_eq!(Cause::of(&Error::Redis(e)), Cause::Auth);
    }

    #[test]
    fn failures_are_counted_and_kept() {
        let h = Health::default();
        h.set_address("h:1");
        h.failed(
            "subscriber",
            &Error::Unavailable("connect timed out".into()),
        );
        h.failed(
            "subscriber",
            &Error::Unavailable("connect timed out".into()),
        );
        let counts = h.counts();
        assert!(counts.contains(&(Cause::Timeout, 2)));
        let last = h.last().map(|f| f.to_string());
        assert_eq!(
            last.as_deref(),
            Some("subscriber (timeout) at h:1: redis unavailable: connect timed out")
        );
    }
}
