//! The one retry helper of Cairn: exponential backoff with jitter, a deadline, and
//! a caller-supplied decision of which errors are worth retrying. Every process
//! retries through here rather than with loops of its own.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(500),
            deadline: Duration::from_secs(30),
        }
    }
}

/// Runs `op` until it succeeds, fails with an error `transient` rejects, or the
/// deadline passes (the last error is returned).
pub async fn retry<T, E, F, Fut>(
    backoff: Backoff,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut delay = backoff.first;
    let mut attempt = 0;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && start.elapsed() + delay < backoff.deadline => {
                // Jitter spreads retries of many clients after a leader change.
                let jitter = Duration::from_micros(u64::from(std::process::id() ^ attempt) % 1000);
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(backoff.max);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_transient_then_stops_on_permanent() {
        let quick = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
            deadline: Duration::from_secs(5),
        };
        let r: Result<u32, &str> = retry(
            quick,
            |e| *e == "again",
            |n| async move {
                if n < 3 {
                    Err("again")
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let r: Result<u32, &str> =
            retry(quick, |e| *e == "again", |_| async { Err("fatal") }).await;
        assert_eq!(r, Err("fatal"));
    }
}
