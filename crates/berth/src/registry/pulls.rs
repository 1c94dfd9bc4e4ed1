//! Pull times, written behind the pulls.
//!
//! A manifest GET is answered before anything is written: the pull is added to a [`PullTally`]
//! in memory (one lock, no I/O), and [`Registry::record_pulls`](super::Registry::record_pulls),
//! called about once a second by the server and once more at shutdown, writes everything
//! tallied since the last call as one `Change::RecordPulls`. Pull times are statistics, not
//! content: a crash loses at most the pulls of the last interval, and a write that fails keeps
//! the tally for the next call (up to [`MAX_PENDING`] entries; beyond that, new entries are
//! dropped and counted).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::meta::PullRecord;
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The most distinct (repository, manifest, tag) entries held between two writes.
pub const MAX_PENDING: usize = 100_000;

type Key = (RepoName, Digest, Option<Tag>);

/// Manifest pulls not yet written.
#[derive(Default)]
pub struct PullTally {
    pending: Mutex<HashMap<Key, (i64, u64)>>,
}

impl PullTally {
    /// Counts one pull of `digest` in `repo` (by `tag`, if it was asked by tag) at `at`.
    pub fn note(&self, repo: &RepoName, digest: &Digest, tag: Option<&Tag>, at: i64) {
        let mut pending = self.pending.lock().expect("pull tally poisoned");
        let key = (repo.clone(), digest.clone(), tag.cloned());
        if let Some(entry) = pending.get_mut(&key) {
            entry.0 = entry.0.max(at);
            entry.1 += 1;
        } else if pending.len() < MAX_PENDING {
            pending.insert(key, (at, 1));
        } else {
            metrics::counter!("berth_pull_times_dropped_total").increment(1);
        }
    }

    /// Everything tallied, emptying the tally.
    pub fn take(&self) -> Vec<PullRecord> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("pull tally poisoned"));
        let mut records: Vec<PullRecord> = pending
            .into_iter()
            .map(|((repo, digest, tag), (at, count))| PullRecord {
                repo,
                digest,
                tag,
                at,
                count,
            })
            .collect();
        // One order for every writer, so concurrent writes touch rows in the same order.
        records.sort_by(|a, b| {
            (a.repo.as_str(), a.digest.to_string(), &a.tag).cmp(&(
                b.repo.as_str(),
                b.digest.to_string(),
                &b.tag,
            ))
        });
        records
    }

    /// Puts back records whose write failed, merged with what was tallied meanwhile.
    pub fn restore(&self, records: Vec<PullRecord>) {
        let mut pending = self.pending.lock().expect("pull tally poisoned");
        for r in records {
            let key = (r.repo, r.digest, r.tag);
            if let Some(entry) = pending.get_mut(&key) {
                entry.0 = entry.0.max(r.at);
                entry.1 += r.count;
            } else if pending.len() < MAX_PENDING {
                pending.insert(key, (r.at, r.count));
            } else {
                metrics::counter!("berth_pull_times_dropped_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Algorithm;

    #[test]
    fn pulls_are_merged_per_manifest_and_tag_and_survive_a_failed_write() {
        let tally = PullTally::default();
        let repo: RepoName = "lib/app".parse().unwrap();
        let d = Digest::of(Algorithm::Sha256, b"m");
        let v1: Tag = "v1".parse().unwrap();
        tally.note(&repo, &d, Some(&v1), 10);
        tally.note(&repo, &d, Some(&v1), 12);
        tally.note(&repo, &d, Some(&v1), 11);
        tally.note(&repo, &d, None, 5);
        let taken = tally.take();
        assert_eq!(taken.len(), 2);
        let by_tag = taken.iter().find(|r| r.tag.is_some()).unwrap();
        assert_eq!((by_tag.at, by_tag.count), (12, 3));
        assert!(tally.take().is_empty());
        tally.note(&repo, &d, None, 20);
        tally.restore(taken);
        let again = tally.take();
        let by_digest = again.iter().find(|r| r.tag.is_none()).unwrap();
        assert_eq!((by_digest.at, by_digest.count), (20, 2));
        assert_eq!(again.len(), 2);
    }
}
