//! How epochs become the timestamps of your dataflow.
//!
//! The operators of this crate run in any scope whose timestamp implements
//! [`EpochTimestamp`]: the source emits an epoch's records at
//! `T::from_epoch(epoch)`, and the sink writes what is complete at time `t`
//! as epoch `t.epoch()`. `u64` (epochs as they are) and
//! [`Duration`] (an epoch `e` at `e` milliseconds: the
//! ingestion epochs of [`Framing::Ingestion`](crate::source::Framing) are
//! milliseconds since the Unix epoch) come with the crate.

use crate::protocol::Epoch;
use std::time::Duration;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// A totally ordered timely timestamp that epochs map to, in order:
/// `from_epoch(e)` is the first time of epoch `e`, `from_epoch(e).epoch() ==
/// e`, `a <= b` exactly when `from_epoch(a) <= from_epoch(b)`, and every
/// time `t` belongs to epoch `t.epoch()`, between `from_epoch(t.epoch())`
/// and the next epoch's first time. An epoch may hold many times (a
/// `Duration`'s epoch is its whole milliseconds): the sink writes it once
/// all of them have passed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::timestamp::EpochTimestamp;
///
/// assert_eq!(u64::from_epoch(42).epoch(), 42);
/// // A dataflow timed in milliseconds:
/// assert_eq!(Duration::from_epoch(1_500), Duration::from_millis(1_500));
/// assert_eq!(Duration::from_secs(2).epoch(), 2_000);
/// ```
pub trait EpochTimestamp: Timestamp + TotalOrder + Copy {
    /// The time of `epoch`.
    fn from_epoch(epoch: Epoch) -> Self;
    /// The epoch of this time.
    fn epoch(&self) -> Epoch;
}

impl EpochTimestamp for u64 {
    fn from_epoch(epoch: Epoch) -> Self {
        epoch
    }

    fn epoch(&self) -> Epoch {
        *self
    }
}

impl EpochTimestamp for Duration {
    fn from_epoch(epoch: Epoch) -> Self {
        Duration::from_millis(epoch)
    }

    /// Whole milliseconds; a time past `u64::MAX` ms (585 million years)
    /// is the last epoch.
    fn epoch(&self) -> Epoch {
        u64::try_from(self.as_millis()).unwrap_or(Epoch::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::EpochTimestamp;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        #[test]
        fn epochs_map_one_to_one_and_in_order(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(u64::from_epoch(a).epoch(), a);
            prop_assert_eq!(Duration::from_epoch(a).epoch(), a);
            prop_assert_eq!(a <= b, Duration::from_epoch(a) <= Duration::from_epoch(b));
        }

        #[test]
        fn a_time_lies_within_its_epoch(nanos in any::<u64>()) {
            let t = Duration::from_nanos(nanos);
            let e = t.epoch();
            prop_assert!(Duration::from_epoch(e) <= t);
            prop_assert!(t < Duration::from_epoch(e + 1));
        }
    }
}
