//! What changed per key in one epoch of a keyed collection's output.
//!
//! A keyed collection (one value per key at every time, such as the output of
//! a `reduce` or of [`Upsert::upsert`](crate::upsert::Upsert::upsert)) changes by retracting a key's old
//! value and inserting its new one. Consolidated per key, an epoch's updates
//! become at most one [`KeyChange`] per key: the new value, or a deletion when
//! the key is gone; a key retracted and reinserted with the same value is no
//! change at all.

/// The change of one key in one epoch.
///
/// # Examples
///
/// ```
/// use timely_kafka::changes::KeyChange;
///
/// let changes: Vec<KeyChange<&str, i64>> = vec![KeyChange::Upsert("a", 12), KeyChange::Delete("b")];
/// let keys: Vec<_> = changes.iter().map(|c| *c.key()).collect();
/// assert_eq!(keys, ["a", "b"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyChange<K, V> {
    /// The key has this new value.
    Upsert(K, V),
    /// The key is gone (a tombstone on a compacted topic).
    Delete(K),
}

impl<K, V> KeyChange<K, V> {
    /// The key that changed.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::changes::KeyChange;
    ///
    /// assert_eq!(KeyChange::<_, i64>::Delete("a").key(), &"a");
    /// assert_eq!(KeyChange::Upsert("b", 3).key(), &"b");
    /// ```
    pub fn key(&self) -> &K {
        match self {
            KeyChange::Upsert(k, _) | KeyChange::Delete(k) => k,
        }
    }
}

/// Consolidates one epoch's updates into key changes, sorted by key.
///
/// If the collection breaks the one-value-per-key rule, the greatest
/// inserted value wins, so that the result is still one change per key.
///
/// # Examples
///
/// ```
/// use timely_kafka::changes::{key_changes, KeyChange};
///
/// let updates = vec![
///     (("a", 3), -1), (("a", 4), 1),   // changed
///     (("b", 5), -1), (("b", 5), 1),   // unchanged
///     (("c", 1), -1),                      // gone
/// ];
/// assert_eq!(key_changes(updates), vec![
///     KeyChange::Upsert("a", 4),
///     KeyChange::Delete("c"),
/// ]);
/// ```
pub fn key_changes<K: Ord + Clone, V: Ord + Clone>(
    updates: impl IntoIterator<Item = ((K, V), isize)>,
) -> Vec<KeyChange<K, V>> {
    let mut updates: Vec<((K, V), isize)> = updates.into_iter().collect();
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    // Sum the diffs of equal (key, value) pairs.
    let mut consolidated: Vec<((K, V), isize)> = Vec::with_capacity(updates.len());
    for (kv, diff) in updates {
        match consolidated.last_mut() {
            Some((last, d)) if *last == kv => *d += diff,
            _ => consolidated.push((kv, diff)),
        }
    }
    consolidated.retain(|(_, d)| *d != 0);
    let mut changes: Vec<KeyChange<K, V>> = Vec::new();
    for ((key, value), diff) in consolidated {
        let same_key = changes.last().is_some_and(|c| *c.key() == key);
        match (same_key, diff > 0) {
            (true, true) => *changes.last_mut().expect("same_key") = KeyChange::Upsert(key, value),
            (true, false) => {}
            (false, true) => changes.push(KeyChange::Upsert(key, value)),
            (false, false) => changes.push(KeyChange::Delete(key)),
        }
    }
    changes
}
