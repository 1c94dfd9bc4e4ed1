//! Group commit, shared by the SQL stores: one writer task per store takes every change list
//! waiting (up to [`MAX_GROUP`]), applies each in its own savepoint of one transaction, so one
//! caller's failure does not undo another's, and commits once (one fsync for all). A caller is
//! answered only after the commit holding its changes is durable.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{Change, MetaError, Result};

/// The most callers whose changes share one transaction.
pub const MAX_GROUP: usize = 128;

/// One caller's changes, waiting for the writer task.
pub struct WriteRequest {
    pub changes: Vec<Change>,
    pub reply: oneshot::Sender<Result<()>>,
}

/// What a store's writer does with a group.
#[async_trait]
pub trait GroupWriter: Send + 'static {
    /// Applies each request's changes (taking them) in its own savepoint of one transaction and
    /// commits; returns each request's outcome, or the error that failed the whole group.
    async fn write(&mut self, group: &mut [WriteRequest]) -> Result<Vec<Result<()>>>;

    /// Runs after every group, committed or not, before any of its callers hears of it.
    fn after(&mut self) {}
}

/// The sending side of a writer task.
#[derive(Clone)]
pub struct Writes(mpsc::Sender<WriteRequest>);

impl Writes {
    /// Starts the writer task.
    pub fn spawn(writer: impl GroupWriter) -> Writes {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(write_loop(writer, rx));
        Writes(tx)
    }

    /// Applies `changes` in the next group and waits until it is committed (or refused).
    pub async fn apply(&self, changes: Vec<Change>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let closed = || MetaError::CommitFailed("the metadata writer has stopped".into());
        self.0
            .send(WriteRequest { changes, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn write_loop(mut writer: impl GroupWriter, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let result = writer.write(&mut group).await;
        writer.after();
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => group.iter().map(|_| Err(group_failure(&e))).collect(),
        };
        for (req, outcome) in group.drain(..).zip(outcomes) {
            let _ = req.reply.send(outcome);
        }
    }
}

/// What each caller of a group hears when the group's transaction failed as a whole. A full disk
/// stays `Full` (most often it is the commit that cannot append to the log), so that the caller
/// answers 507 and the user learns what to do; a database that cannot be reached stays
/// `Unavailable` (503: retry); anything else is `CommitFailed`.
pub fn group_failure(e: &MetaError) -> MetaError {
    match e {
        MetaError::Full(m) => MetaError::Full(m.clone()),
        MetaError::Unavailable(m) => MetaError::Unavailable(m.clone()),
        e => MetaError::CommitFailed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::group_failure;
    use crate::meta::MetaError;

    #[test]
    fn a_group_that_fails_as_a_whole_keeps_full_and_unavailable() {
        let full = MetaError::Full("database or disk is full".into());
        assert!(matches!(
            group_failure(&full),
            MetaError::Full(m) if m == "database or disk is full"
        ));
        let down = MetaError::Unavailable("connection refused".into());
        assert!(matches!(group_failure(&down), MetaError::Unavailable(_)));
        let other = MetaError::Corrupt("x".into());
        assert!(matches!(group_failure(&other), MetaError::CommitFailed(_)));
    }
}
