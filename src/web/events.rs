//! Fanning each committed epoch out to the browsers that follow the page.
//!
//! Each browser has a queue of at most [`QUEUE_EVENTS`] events. The events
//! are built once and shared, so a queue costs a few pointers, whatever the
//! event's size. A browser whose queue is full is not reading: it is
//! dropped, never waited for, and the others are not held back. When it
//! connects again (an `EventSource` does by itself) it starts from a fresh
//! snapshot, and so catches up.
//!
//! A browser's snapshot and its place in the stream are taken under one
//! lock: it gets every epoch after its snapshot, once, in order.

use super::committed::CommittedEpoch;
use super::page::{PageState, ReaderHealth};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

/// Events a browser may have waiting before it is dropped as not reading.
pub const QUEUE_EVENTS: usize = 16;

/// An event for one browser: an epoch's changes, as JSON.
pub type Event = Arc<str>;

/// The page's state and the browsers following it; clones share both.
///
/// # Examples
///
/// ```
/// use velib_dataflow::web::committed::CommittedEpoch;
/// use velib_dataflow::web::events::EventHub;
///
/// let hub = EventHub::default();
/// let (snapshot, events) = hub.subscribe();
/// assert!(snapshot.contains(r#""epoch":null"#));
/// hub.publish(CommittedEpoch::empty(1));
/// assert!(events.try_recv().unwrap().contains(r#""epoch":1"#));
/// ```
#[derive(Clone, Debug, Default)]
pub struct EventHub {
    inner: Arc<Mutex<Hub>>,
}

#[derive(Debug, Default)]
struct Hub {
    page: PageState,
    reader: ReaderHealth,
    followers: Vec<Follower>,
    dropped: u64,
}

/// A browser's queue, and how to cut it off when it is dropped.
struct Follower {
    events: SyncSender<Event>,
    cut_off: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish_non_exhaustive()
    }
}

impl EventHub {
    fn lock(&self) -> MutexGuard<'_, Hub> {
        // A panic elsewhere leaves the state as it was before the epoch.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a committed epoch to the page and sends its event to every
    /// browser, dropping those whose queue is full.
    pub fn publish(&self, epoch: CommittedEpoch) {
        let mut hub = self.lock();
        let event: Event = hub.page.apply(epoch).into();
        let mut dropped = 0;
        let followers = std::mem::take(&mut hub.followers);
        for mut follower in followers {
            match follower.events.try_send(Arc::clone(&event)) {
                Ok(()) => hub.followers.push(follower),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    // Not reading: its connection is cut, so that a writer
                    // blocked on it (a browser taking a byte now and then)
                    // is freed too.
                    if let Some(cut_off) = follower.cut_off.take() {
                        cut_off();
                    }
                    dropped += 1;
                }
            }
        }
        hub.dropped += dropped;
    }

    /// The page now, as JSON, and the events of every later epoch.
    pub fn subscribe(&self) -> (String, Receiver<Event>) {
        self.follow(None)
    }

    /// As [`EventHub::subscribe`], calling `cut_off` if the follower is
    /// dropped for not reading (the server shuts its connection).
    pub fn subscribe_cutting_off(
        &self,
        cut_off: impl FnOnce() + Send + 'static,
    ) -> (String, Receiver<Event>) {
        self.follow(Some(Box::new(cut_off)))
    }

    fn follow(&self, cut_off: Option<Box<dyn FnOnce() + Send>>) -> (String, Receiver<Event>) {
        let mut hub = self.lock();
        let (events, receiver) = sync_channel(QUEUE_EVENTS);
        hub.followers.push(Follower { events, cut_off });
        (
            hub.page
                .snapshot_json(crate::freshness::unix_now(), &hub.reader),
            receiver,
        )
    }

    /// The page now, as JSON.
    pub fn snapshot_json(&self) -> String {
        let hub = self.lock();
        hub.page
            .snapshot_json(crate::freshness::unix_now(), &hub.reader)
    }

    /// How the reader is doing.
    pub fn reader(&self) -> ReaderHealth {
        self.lock().reader.clone()
    }

    /// Says how the reader is doing (in every later snapshot).
    pub fn set_reader(&self, health: ReaderHealth) {
        let mut hub = self.lock();
        if hub.reader != health {
            hub.reader = health;
        }
    }

    /// The last epoch applied.
    pub fn epoch(&self) -> Option<crate::dataflow::Epoch> {
        self.lock().page.epoch()
    }

    /// Browsers following the page now.
    pub fn followers(&self) -> usize {
        self.lock().followers.len()
    }

    /// Browsers dropped so far: they stopped reading, or left.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_that_does_not_read_is_dropped_and_holds_nobody_back() {
        let hub = EventHub::default();
        let (_, reading) = hub.subscribe();
        let (_, stuck) = hub.subscribe();
        for epoch in 1..=QUEUE_EVENTS as u64 {
            hub.publish(CommittedEpoch::empty(epoch));
            assert!(reading.try_recv().is_ok());
        }
        assert_eq!(hub.followers(), 2, "a full queue is not dropped yet");
        hub.publish(CommittedEpoch::empty(QUEUE_EVENTS as u64 + 1));
        assert_eq!((hub.followers(), hub.dropped()), (1, 1));
        assert!(reading.try_recv().unwrap().contains(r#""epoch":17"#));
        // The stuck one reads what it had, then learns it was dropped.
        assert_eq!(stuck.try_iter().count(), QUEUE_EVENTS);
        assert!(matches!(
            stuck.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        ));
        // Coming back, it starts from the page as it is now.
        let (snapshot, _) = hub.subscribe();
        assert!(snapshot.contains(r#""epoch":17"#));
    }

    #[test]
    fn a_browser_dropped_for_not_reading_has_its_connection_cut() {
        let hub = EventHub::default();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        let (_, _stuck) = hub
            .subscribe_cutting_off(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        for epoch in 1..=QUEUE_EVENTS as u64 {
            hub.publish(CommittedEpoch::empty(epoch));
        }
        assert!(!cut.load(std::sync::atomic::Ordering::SeqCst));
        hub.publish(CommittedEpoch::empty(QUEUE_EVENTS as u64 + 1));
        assert!(cut.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_browser_that_left_is_forgotten() {
        let hub = EventHub::default();
        drop(hub.subscribe());
        hub.publish(CommittedEpoch::empty(1));
        assert_eq!(hub.followers(), 0);
    }
}
