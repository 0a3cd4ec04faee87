//! Running the aggregation in-process over a sequence of epochs.
//!
//! This is how recorded snapshots are replayed (`velib_replay`), and how the
//! tests drive the dataflow with any number of timely workers or processes:
//! worker 0 feeds every epoch's updates, all workers share the work, and each
//! epoch's output is gathered at worker 0 and handed over once the epoch is
//! complete.

use crate::counts::PostcodeTotals;
use crate::dataflow::{postcode_counts, Epoch};
use crate::feed::FeedTime;
use crate::kafka::changes::{key_changes, KeyChange};
use crate::postcode::Postcode;
use crate::snapshot::EpochUpdates;
use differential_dataflow::input::Input;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::{Exchange, Inspect, Probe};

/// The output of one epoch: the postcodes whose counts changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochOutput {
    /// The epoch.
    pub epoch: Epoch,
    /// The feed's time of its snapshot.
    pub feed_time: FeedTime,
    /// One change per postcode whose counts changed, sorted by postcode.
    pub changes: Vec<KeyChange<Postcode, PostcodeTotals>>,
}

/// A replay that could not run to its end.
///
/// # Examples
///
/// ```
/// use velib_dataflow::replay::{run, ReplayError};
/// use velib_dataflow::snapshot::EpochUpdates;
///
/// let epochs = vec![EpochUpdates { epoch: 2, ..Default::default() }, EpochUpdates { epoch: 1, ..Default::default() }];
/// let error = run(timely::Config::thread(), epochs, |_| {}).unwrap_err();
/// assert!(matches!(error, ReplayError::EpochOrder { epoch: 1, previous: 2 }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Timely could not start, or a worker failed.
    #[error("timely: {0}")]
    Timely(String),
    /// The epochs given were not strictly increasing.
    #[error("epoch {epoch} does not follow epoch {previous}: epochs must strictly increase")]
    EpochOrder {
        /// The offending epoch.
        epoch: Epoch,
        /// The one before it.
        previous: Epoch,
    },
}

type Gathered = Rc<RefCell<Vec<((Postcode, PostcodeTotals), Epoch, isize)>>>;

/// Runs [`postcode_counts`] on `config`'s workers over `epochs`, calling
/// `on_epoch` (on worker 0's thread) with each epoch's output as soon as the
/// epoch is complete across all workers.
///
/// # Examples
///
/// ```
/// use velib_dataflow::replay::run;
/// use velib_dataflow::snapshot::EpochUpdates;
///
/// use std::sync::{Arc, Mutex};
///
/// let epochs = vec![EpochUpdates { epoch: 1, ..Default::default() }];
/// let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
/// let sink = seen.clone();
/// run(timely::Config::process(2), epochs, move |out| sink.lock().unwrap().push(out.epoch))?;
/// assert_eq!(*seen.lock().unwrap(), vec![1]);
/// # Ok::<(), velib_dataflow::replay::ReplayError>(())
/// ```
pub fn run<I, F>(config: timely::Config, epochs: I, on_epoch: F) -> Result<(), ReplayError>
where
    I: IntoIterator<Item = EpochUpdates>,
    I::IntoIter: Send + 'static,
    F: FnMut(EpochOutput) + Send + 'static,
{
    let epochs = Arc::new(Mutex::new(Some(epochs.into_iter())));
    let on_epoch = Arc::new(Mutex::new(on_epoch));
    let guards = timely::execute(config, move |worker| -> Result<(), ReplayError> {
        let gathered: Gathered = Rc::default();
        let sink = Rc::clone(&gathered);
        let (mut statuses, mut directory, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (statuses, status_collection) = scope.new_collection();
            let (directory, directory_collection) = scope.new_collection();
            let (probe, _) = postcode_counts(status_collection, directory_collection)
                .inner
                .exchange(|_| 0)
                .inspect(move |update| sink.borrow_mut().push(*update))
                .probe();
            (statuses, directory, probe)
        });
        if worker.index() != 0 {
            // Worker 0 alone feeds; the others' closed inputs never hold back progress.
            return Ok(());
        }
        let Some(epochs) = epochs
            .lock()
            .map_err(|e| ReplayError::Timely(e.to_string()))?
            .take()
        else {
            return Ok(());
        };
        let mut previous: Epoch = 0;
        for updates in epochs {
            if updates.epoch <= previous {
                return Err(ReplayError::EpochOrder {
                    epoch: updates.epoch,
                    previous,
                });
            }
            previous = updates.epoch;
            statuses.advance_to(updates.epoch);
            directory.advance_to(updates.epoch);
            for (row, diff) in updates.statuses {
                statuses.update(row, diff);
            }
            for (row, diff) in updates.directory {
                directory.update(row, diff);
            }
            statuses.advance_to(updates.epoch + 1);
            directory.advance_to(updates.epoch + 1);
            statuses.flush();
            directory.flush();
            while probe.less_than(&(updates.epoch + 1)) {
                worker.step();
            }
            let done: Vec<_> = gathered
                .borrow_mut()
                .drain(..)
                .map(|(kv, epoch, diff)| {
                    debug_assert_eq!(
                        epoch, updates.epoch,
                        "output is gathered one epoch at a time"
                    );
                    (kv, diff)
                })
                .collect();
            let output = EpochOutput {
                epoch: updates.epoch,
                feed_time: updates.feed_time,
                changes: key_changes(done),
            };
            (on_epoch
                .lock()
                .map_err(|e| ReplayError::Timely(e.to_string()))?)(output);
        }
        Ok(())
    })
    .map_err(ReplayError::Timely)?;
    for result in guards.join() {
        result.map_err(ReplayError::Timely)??;
    }
    Ok(())
}
