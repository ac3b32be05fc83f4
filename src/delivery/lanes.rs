//! `ordering = "key"`: events of one row key in commit order, different keys
//! in parallel lanes, so a failing key blocks only its lane.
//!
//! The worker becomes a dispatcher: it reads the log in seq order (as the
//! commit worker does), skips unwanted events, and puts each wanted event on
//! lane `hash(form, key) % lanes` ([`lane_of`]; events without a key, such as
//! truncates, go to lane 0). Each lane delivers its events one at a time
//! through the same step as commit order (`super::request::Sender::deliver`:
//! attempts, backoff, dead letters, 410, `disable_after`); the rate limiter,
//! the `disable_after` streak (consecutive failed attempts across all lanes)
//! and the global semaphore are shared by all lanes of the subscription.
//!
//! Cursor: lanes finish events out of seq order, so the cursor persisted in
//! the store is the low watermark ([`Watermark`]): the highest seq below
//! which every event is finished (delivered, dead-lettered or skipped). It
//! never passes an unfinished event. After a crash, events above the
//! watermark that other lanes had already delivered are sent again
//! (at-least-once, same ids).
//!
//! Memory: each lane queue holds at most [`LANE_QUEUE`] events. When a stuck
//! lane's queue is full, the dispatcher stops reading ahead (backpressure):
//! the other lanes drain what they already have, then wait until the stuck
//! lane moves. So one failing key holds back other keys by at most
//! `LANE_QUEUE` of its own events (plus one page of the log).
//!
//! Retry state: the store has one attempts/next-attempt slot per
//! subscription, not one per lane, so lanes keep theirs in memory; after a
//! restart every lane starts its attempt count afresh. Failed attempts are
//! still recorded (`record_failure`) so `walhook status` shows a last error.
//!
//! Disable and shutdown: 410 Gone or `disable_after` in any lane stops all
//! lanes, flushes the watermark and disables the subscription. On shutdown
//! all lanes stop taking events; requests in flight get the grace period.

use std::collections::BTreeSet;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::{JoinError, JoinSet};
use tracing::warn;

use super::request::{CursorMode, Done, RetryState, Sender};
use super::worker::{Worker, FLUSH_INTERVAL, PAGE_SIZE};
use super::DeliveryError;
use crate::store::StoredEvent;

/// Events waiting per lane. Bounds memory (lanes × this many events, 1024
/// with the default 8 lanes: about four pages of the log) and how far the
/// dispatcher reads ahead of a stuck lane before backpressure holds every
/// lane back: 128 lets a failing key's lane absorb a burst of its keys'
/// events while the other lanes keep delivering.
pub const LANE_QUEUE: usize = 128;

/// What a lane ends with: `Some(reason)` when the subscription must be disabled.
type LaneEnd = Result<Option<String>, DeliveryError>;

/// A lane's report that it finished an event.
#[derive(Debug, Clone, Copy)]
struct Finished {
    seq: i64,
    delivered: bool,
}

/// The lane of an event: a stable FNV-1a hash of `(form, key)` modulo
/// `lanes` (the same on every run and build); lane 0 without a key.
pub fn lane_of(form: &str, key: Option<&str>, lanes: usize) -> usize {
    let Some(key) = key else {
        return 0;
    };
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    // The form's length first, so ("ab", "c") and ("a", "bc") differ.
    let len = u64::try_from(form.len()).unwrap_or(u64::MAX).to_le_bytes();
    for byte in len.iter().chain(form.as_bytes()).chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    let lanes = u64::try_from(lanes.max(1)).unwrap_or(u64::MAX);
    usize::try_from(hash % lanes).unwrap_or(0)
}

/// The low watermark over events finished out of order.
///
/// Events are started in seq order; the watermark is one below the lowest
/// started-but-unfinished seq, or the highest seq seen when none is open.
/// So every event at or below it is finished (or was skipped).
#[derive(Debug, Clone)]
pub(crate) struct Watermark {
    seen: i64,
    open: BTreeSet<i64>,
}

impl Watermark {
    /// Everything up to `cursor` is finished.
    pub(crate) fn new(cursor: i64) -> Watermark {
        Watermark {
            seen: cursor,
            open: BTreeSet::new(),
        }
    }

    /// `seq` was handed to a lane.
    pub(crate) fn start(&mut self, seq: i64) {
        self.seen = self.seen.max(seq);
        self.open.insert(seq);
    }

    /// `seq` is not wanted: finished as soon as it is seen.
    pub(crate) fn skip(&mut self, seq: i64) {
        self.seen = self.seen.max(seq);
    }

    /// `seq` was delivered or dead-lettered.
    pub(crate) fn finish(&mut self, seq: i64) {
        self.open.remove(&seq);
    }

    /// The highest seq at or below which every event is finished.
    pub(crate) fn get(&self) -> i64 {
        self.open
            .first()
            .map_or(self.seen, |lowest| lowest.saturating_sub(1))
    }
}

/// Runs the dispatcher and the lanes until shutdown, a disable or a store
/// error; the watermark is in `worker.cursor` (flushed by the caller).
pub(super) async fn run(worker: &mut Worker, sender: Sender) -> Result<(), DeliveryError> {
    let count = usize::try_from(worker.sub.lanes).unwrap_or(1).max(1);
    // A child token: a disable in one lane stops all lanes, not the process.
    let stop = worker.shared.shutdown.child_token();
    let mut lane_sender = sender;
    lane_sender.shared.shutdown = stop.clone();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut queues = Vec::with_capacity(count);
    let mut lanes = JoinSet::new();
    for _ in 0..count {
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        queues.push(tx);
        lanes.spawn(lane(lane_sender.clone(), rx, done_tx.clone()));
    }
    drop(done_tx);
    let mut marks = Watermark::new(worker.cursor);
    let mut end = {
        let mut d = Dispatcher {
            worker: &mut *worker,
            queues: &queues,
            lanes: &mut lanes,
            done: &mut done_rx,
            marks: &mut marks,
        };
        d.dispatch().await
    };
    stop.cancel();
    drop(queues);
    while let Some(joined) = lanes.join_next().await {
        let lane_end = joined_end(&worker.sub.name, joined);
        end = merge(end, lane_end);
    }
    while let Ok(finished) = done_rx.try_recv() {
        apply(worker, &mut marks, finished);
    }
    match end? {
        Some(why) => worker.disable(why).await,
        None => Ok(()),
    }
}

/// The first error wins, then the first disable reason.
fn merge(a: LaneEnd, b: LaneEnd) -> LaneEnd {
    match (a, b) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(Some(why)), _) | (Ok(None), Ok(Some(why))) => Ok(Some(why)),
        (Ok(None), Ok(None)) => Ok(None),
    }
}

fn joined_end(subscription: &str, joined: Result<LaneEnd, JoinError>) -> LaneEnd {
    joined.unwrap_or_else(|source| {
        Err(DeliveryError::Lane {
            subscription: subscription.to_owned(),
            source,
        })
    })
}

/// A finished event moves the watermark (the store sees it at the next flush).
fn apply(worker: &mut Worker, marks: &mut Watermark, finished: Finished) {
    marks.finish(finished.seq);
    worker.moved_past(marks.get(), u64::from(finished.delivered));
}

/// What woke the dispatcher while it waited.
enum Wake {
    Finished(Option<Finished>),
    LaneEnded(Option<Result<LaneEnd, JoinError>>),
    Tick(bool),
}

struct Dispatcher<'a> {
    worker: &'a mut Worker,
    queues: &'a [mpsc::Sender<StoredEvent>],
    lanes: &'a mut JoinSet<LaneEnd>,
    done: &'a mut mpsc::UnboundedReceiver<Finished>,
    marks: &'a mut Watermark,
}

impl Dispatcher<'_> {
    /// Reads the log and feeds the lanes; returns when shutdown comes or a
    /// lane ends (with its result).
    async fn dispatch(&mut self) -> LaneEnd {
        loop {
            while let Some(event) = self.worker.buffer.pop_front() {
                self.absorb();
                if self.worker.shared.shutdown.is_cancelled() {
                    return Ok(None);
                }
                if !self.worker.wants(&event) {
                    self.marks.skip(event.seq);
                    self.worker.moved_past(self.marks.get(), 0);
                    continue;
                }
                let lane = lane_of(&event.form, event.key.as_deref(), self.queues.len());
                self.marks.start(event.seq);
                let mut pending = event;
                loop {
                    match self.queues[lane].try_send(pending) {
                        Ok(()) => break,
                        Err(TrySendError::Closed(_)) => {
                            // The lane ended (a disable or an error): learn why.
                            let joined = self.lanes.join_next().await;
                            return self.lane_ended(joined);
                        }
                        Err(TrySendError::Full(event)) => {
                            // Backpressure: wait for that lane to move.
                            pending = event;
                            if let Some(end) = self.wait(false).await {
                                return end;
                            }
                            self.flush_if_moved().await?;
                        }
                    }
                }
            }
            self.absorb();
            self.flush_if_moved().await?;
            if self.worker.shared.shutdown.is_cancelled() {
                return Ok(None);
            }
            // Mark the signal seen before reading, so an append that lands
            // during the read wakes the wait below instead of being missed.
            self.worker.appended.borrow_and_update();
            let after = self.worker.read_pos;
            let page = self
                .worker
                .store_call("read events", move |s, name| {
                    s.read_for(name, after, PAGE_SIZE)
                })
                .await?;
            if let Some(last) = page.last() {
                self.worker.read_pos = last.seq;
                self.worker.buffer.extend(page);
                continue;
            }
            // Caught up: wait for appends or for lanes to finish events.
            if let Some(end) = self.wait(true).await {
                return end;
            }
        }
    }

    /// Takes finished events without waiting.
    fn absorb(&mut self) {
        while let Ok(finished) = self.done.try_recv() {
            apply(self.worker, self.marks, finished);
        }
    }

    /// Waits for a finished event, a lane's end, shutdown, or (when
    /// `for_appends`) new events; `Some` when the dispatcher must stop.
    async fn wait(&mut self, for_appends: bool) -> Option<LaneEnd> {
        let shutdown = self.worker.shared.shutdown.clone();
        let wake = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Some(Ok(None)),
            finished = self.done.recv() => Wake::Finished(finished),
            joined = self.lanes.join_next() => Wake::LaneEnded(joined),
            more = self.worker.wait_for_events(None), if for_appends => Wake::Tick(more),
            () = tokio::time::sleep(FLUSH_INTERVAL), if !for_appends => Wake::Tick(true),
        };
        match wake {
            Wake::Finished(Some(finished)) => {
                apply(self.worker, self.marks, finished);
                None
            }
            // Every lane is gone; the join below reports why.
            Wake::Finished(None) => {
                let joined = self.lanes.join_next().await;
                Some(self.lane_ended(joined))
            }
            Wake::LaneEnded(joined) => Some(self.lane_ended(joined)),
            Wake::Tick(true) => None,
            Wake::Tick(false) => Some(Ok(None)),
        }
    }

    fn lane_ended(&self, joined: Option<Result<LaneEnd, JoinError>>) -> LaneEnd {
        match joined {
            Some(joined) => joined_end(&self.worker.sub.name, joined),
            None => Ok(None),
        }
    }

    /// Persists the watermark when it moved (coalesced like the commit
    /// worker). Deliveries alone do not write: `Store::advance` would clear
    /// the `last_error` a stuck lane recorded.
    async fn flush_if_moved(&mut self) -> Result<(), DeliveryError> {
        if self.worker.cursor > self.worker.persisted {
            self.worker.maybe_flush().await?;
        } else {
            self.worker.flush_history_if_due().await?;
        }
        Ok(())
    }
}

/// One lane: delivers its events one at a time, in the order queued.
async fn lane(
    sender: Sender,
    mut queue: mpsc::Receiver<StoredEvent>,
    done: mpsc::UnboundedSender<Finished>,
) -> LaneEnd {
    let mut retry = RetryState::default();
    loop {
        let event = tokio::select! {
            biased;
            () = sender.shared.shutdown.cancelled() => return Ok(None),
            event = queue.recv() => match event {
                Some(event) => event,
                None => return Ok(None),
            },
        };
        let seq = event.seq;
        let id = event.id.clone();
        match sender
            .deliver(&mut retry, vec![event], CursorMode::Lane)
            .await?
        {
            Done::Delivered => {
                let _ = done.send(Finished {
                    seq,
                    delivered: true,
                });
            }
            Done::DeadLettered { disable } => {
                let _ = done.send(Finished {
                    seq,
                    delivered: false,
                });
                if disable.is_some() {
                    return Ok(disable);
                }
            }
            Done::Disable(why) => return Ok(Some(why)),
            Done::Stopped => {
                if !sender.shared.shutdown.is_cancelled() {
                    warn!(subscription = %sender.sub.name, event_id = %id, "lane stopped");
                }
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_hash_is_stable() {
        // Fixed values: a change here would reorder keys across an upgrade.
        let a = lane_of("orders", Some("42"), 1 << 20);
        assert_eq!(a, lane_of("orders", Some("42"), 1 << 20));
        assert_eq!(lane_of("orders", Some("42"), 8), a % 8);
        assert_ne!(
            lane_of("orders", Some("42"), 1 << 20),
            lane_of("order", Some("s42"), 1 << 20),
            "form and key are kept apart"
        );
        assert_eq!(lane_of("orders", None, 8), 0, "no key: lane 0");
        assert_eq!(lane_of("orders", Some("42"), 1), 0);
    }

    #[test]
    fn lane_hash_spreads_keys() {
        let lanes = 8;
        let mut counts = vec![0usize; lanes];
        for id in 1..=8000 {
            counts[lane_of("t", Some(&id.to_string()), lanes)] += 1;
        }
        for (lane, &n) in counts.iter().enumerate() {
            assert!((800..=1200).contains(&n), "lane {lane} got {n} of 8000");
        }
    }

    #[test]
    fn watermark_waits_for_the_lowest_open_event() {
        let mut marks = Watermark::new(10);
        assert_eq!(marks.get(), 10);
        for seq in 11..=15 {
            marks.start(seq);
        }
        marks.skip(16);
        assert_eq!(marks.get(), 10);
        // Out of order: 13 and 15 first.
        marks.finish(13);
        marks.finish(15);
        assert_eq!(marks.get(), 10, "11 is still open");
        marks.finish(11);
        assert_eq!(marks.get(), 11, "12 is still open");
        marks.finish(12);
        assert_eq!(marks.get(), 13, "14 is still open");
        marks.finish(14);
        assert_eq!(marks.get(), 16, "all finished, the skipped 16 too");
    }

    #[test]
    fn watermark_never_goes_below_the_start() {
        let mut marks = Watermark::new(100);
        marks.start(101);
        assert_eq!(marks.get(), 100);
        marks.finish(101);
        assert_eq!(marks.get(), 101);
    }
}
