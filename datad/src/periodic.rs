//! How a datad's background passes (scrub, orphan collection) are timed: a
//! first pass after a random part of the interval, so the nodes of a cluster
//! do not all start together, then one per interval (a late pass delays the
//! next instead of bunching them up).

use std::future::Future;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `pass` every `interval` on node `node_id` until `stop` is cancelled,
/// which also cuts a pass in progress short.
pub async fn every<F, Fut>(interval: Duration, node_id: u64, stop: &CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let jitter_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) ^ node_id)
        % (interval.as_millis().max(1) as u64);
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(Duration::from_millis(jitter_ms)) => {}
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = pass() => {}
        }
    }
}
