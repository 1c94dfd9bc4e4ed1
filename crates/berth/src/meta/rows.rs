//! What both SQL stores share: decoding rows into records (the columns have the same names and
//! meanings on SQLite and PostgreSQL), the shared column lists, and the clock of row times.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{BlobRecord, BlobState, Lease, ManifestRecord, MetaError, OutboxEvent, Result};
use crate::oci::digest::Digest;
use crate::oci::name::RepoName;

/// The manifest columns every manifest query selects (table alias `m`).
pub const MANIFEST_COLUMNS: &str =
    "m.digest, m.media_type, m.size, m.artifact_type, m.subject, m.annotations";

/// Unix seconds now (row times).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn parse_digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e| MetaError::Corrupt(format!("stored digest {s:?}: {e}")))
}

pub fn parse_repo(s: &str) -> Result<RepoName> {
    s.parse()
        .map_err(|e| MetaError::Corrupt(format!("stored repository name: {e}")))
}

fn parse_json(what: &str, s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| MetaError::Corrupt(format!("stored {what}: {e}")))
}

/// A row of either engine, read by column name.
pub trait Columns<'r>: Row {
    fn text(&'r self, col: &str) -> Result<&'r str>;
    fn maybe_text(&'r self, col: &str) -> Result<Option<&'r str>>;
    fn int(&'r self, col: &str) -> Result<i64>;
    fn maybe_int(&'r self, col: &str) -> Result<Option<i64>>;
}

impl<'r, R> Columns<'r> for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    Option<&'r str>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&'r self, col: &str) -> Result<&'r str> {
        Ok(self.try_get(col)?)
    }
    fn maybe_text(&'r self, col: &str) -> Result<Option<&'r str>> {
        Ok(self.try_get(col)?)
    }
    fn int(&'r self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn maybe_int(&'r self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
}

/// A row of [`MANIFEST_COLUMNS`].
pub fn manifest<'r>(row: &'r impl Columns<'r>) -> Result<ManifestRecord> {
    Ok(ManifestRecord {
        digest: parse_digest(row.text("digest")?)?,
        media_type: row.text("media_type")?.to_string(),
        size: row.int("size")? as u64,
        artifact_type: row.maybe_text("artifact_type")?.map(String::from),
        subject: row.maybe_text("subject")?.map(parse_digest).transpose()?,
        annotations: row
            .maybe_text("annotations")?
            .map(|a| parse_json("annotations", a))
            .transpose()?,
    })
}

/// A row of `size, state, created_at, last_referenced_at` from `blobs`.
pub fn blob<'r>(digest: &Digest, row: &'r impl Columns<'r>) -> Result<BlobRecord> {
    let state = match row.text("state")? {
        "stored" => BlobState::Stored,
        "deleting" => BlobState::Deleting,
        other => return Err(MetaError::Corrupt(format!("blob state {other:?}"))),
    };
    Ok(BlobRecord {
        digest: digest.clone(),
        size: row.int("size")? as u64,
        state,
        created_at: row.int("created_at")?,
        last_referenced_at: row.int("last_referenced_at")?,
    })
}

/// A row of `name, size`: a repository and the size of a blob linked in it.
pub fn repo_and_size<'r>(row: &'r impl Columns<'r>) -> Result<(RepoName, u64)> {
    Ok((parse_repo(row.text("name")?)?, row.int("size")? as u64))
}

/// A row of `seq, topic, payload` from `outbox`.
pub fn outbox<'r>(row: &'r impl Columns<'r>) -> Result<OutboxEvent> {
    Ok(OutboxEvent {
        seq: row.int("seq")?,
        topic: row.text("topic")?.to_string(),
        payload: parse_json("outbox payload", row.text("payload")?)?,
    })
}

/// A row of `holder, token` from `leases`.
pub fn lease<'r>(name: &str, row: &'r impl Columns<'r>) -> Result<Lease> {
    Ok(Lease {
        name: name.to_string(),
        holder: row.text("holder")?.to_string(),
        token: row.int("token")?,
    })
}
