//! Replication: rules that copy images from this registry to remote ones as they are pushed
//! (push rules), and from remote ones into this registry on an interval (pull rules).
//!
//! A push rule hears of pushes and deletes through the event stream: [`ReplicationSink`] adds
//! an outbox entry for each matching one in the transaction of the change itself, so nothing
//! acknowledged is lost to a crash. Each rule's worker runs on one instance at a time (the
//! lease `replication/<rule>`), takes its entries in order, copies (see [`copy`]) with retries
//! and backoff, and acknowledges an entry only once it is copied, or given up on after
//! [`ATTEMPTS`] refusals (counted, with the reason, in the rule's progress).
//!
//! Loops are impossible: a replicated push carries the id of the registry it was first pushed
//! to (`Berth-Replication-Origin`), which the receiving registry keeps in its own events and
//! passes on; no rule copies content to the registry it came from, and nothing is sent to a
//! remote that has the tag at the same digest already.

pub mod copy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::meta::lease::{self, run_leased};
use crate::meta::{Change, MetaStore, ReplicationCopy, ReplicationProgress};
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};
use crate::registry::events::{
    with_request, EventAction, EventSink, RegistryEvent, RequestContext, BLOB_MEDIA_TYPE,
};
use crate::registry::Registry;
use crate::remote::{Client, Endpoint};
use copy::{Copied, CopyError, Pull, Push, Uploads};

/// Refusals of one copy before it is given up on.
pub const ATTEMPTS: u32 = 5;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle push rule looks at its outbox.
const POLL: Duration = Duration::from_millis(300);

/// A rule, ready to match.
pub struct Rule {
    pub name: String,
    /// The remote registry it copies to (push) or from (pull).
    pub remote: String,
    pub push: bool,
    repositories: Option<GlobSet>,
    tags: Option<GlobSet>,
    namespace: String,
    deletes: bool,
    enabled: bool,
    interval: Duration,
}

fn globs(patterns: &[String]) -> anyhow::Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(GlobBuilder::new(p).literal_separator(true).build()?);
    }
    Ok(Some(set.build()?))
}

impl Rule {
    fn from_config(r: &crate::config::ReplicationRule) -> anyhow::Result<Rule> {
        let (remote, push) = match (&r.destination, &r.source) {
            (Some(d), _) => (d.clone(), true),
            (None, Some(s)) => (s.clone(), false),
            (None, None) => anyhow::bail!("rule {} has neither destination nor source", r.name),
        };
        Ok(Rule {
            name: r.name.clone(),
            remote,
            push,
            repositories: globs(&r.repositories)?,
            tags: globs(&r.tags)?,
            namespace: r.namespace.trim_matches('/').to_string(),
            deletes: r.deletes,
            enabled: r.enabled,
            interval: r.interval.0,
        })
    }

    pub fn matches_repository(&self, repo: &str) -> bool {
        self.repositories.as_ref().is_none_or(|g| g.is_match(repo))
    }

    pub fn matches_tag(&self, tag: &str) -> bool {
        self.tags.as_ref().is_none_or(|g| g.is_match(tag))
    }

    /// Where `repo` goes: under the rule's namespace instead of its first segment, if set.
    pub fn renamed(&self, repo: &str) -> String {
        if self.namespace.is_empty() {
            return repo.to_string();
        }
        match repo.split_once('/') {
            Some((_, rest)) => format!("{}/{rest}", self.namespace),
            None => format!("{}/{repo}", self.namespace),
        }
    }

    fn topic(&self) -> String {
        format!("replication/{}", self.name)
    }

    /// What of `event` this rule copies, if anything.
    fn entry_for(&self, event: &RegistryEvent) -> Option<Entry> {
        if !self.push || !self.enabled || !self.matches_repository(event.repo.as_str()) {
            return None;
        }
        let action = match event.action {
            EventAction::Push => Action::Push,
            EventAction::Delete if self.deletes => Action::Delete,
            _ => return None,
        };
        if event.media_type.as_deref() == Some(BLOB_MEDIA_TYPE) {
            return None;
        }
        match (&event.tag, action) {
            (Some(tag), _) if !self.matches_tag(tag.as_str()) => return None,
            // A manifest pushed by digest alone goes with what tags it (an index's child), unless
            // it refers to another (a signature, an SBOM): then it goes as it is pushed.
            (None, Action::Push) if event.subject.is_none() => return None,
            // A manifest deleted by digest: only when every tag is replicated.
            (None, Action::Delete) if self.tags.is_some() => return None,
            _ => {}
        }
        Some(Entry {
            action,
            repository: event.repo.to_string(),
            digest: event.digest.as_ref().map(Digest::to_string),
            tag: event.tag.as_ref().map(Tag::to_string),
            origin: event.request.origin.clone(),
        })
    }
}

/// A push or a delete to copy, as the outbox keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    action: Action,
    repository: String,
    digest: Option<String>,
    tag: Option<String>,
    /// The registry the content was first pushed to, when it came by replication.
    origin: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Push,
    Delete,
}

/// The replication rules and the remotes they name.
pub struct Replication {
    rules: Vec<Rule>,
    remotes: HashMap<String, Arc<Client>>,
    /// Each remote's id, once it said it (`None` inside: it is not a Berth).
    remote_ids: Mutex<HashMap<String, Option<String>>>,
}

impl Replication {
    /// The configuration's rules; `None` when it has none.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Replication>>> {
        let r = &config.replication;
        if r.rules.is_empty() {
            return Ok(None);
        }
        let mut remotes = HashMap::new();
        for remote in &r.registries {
            let ca = match &remote.ca {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("replication.registries {}: ca {path}: {e}", remote.name)
                })?),
                None => None,
            };
            let client = Client::new(Endpoint {
                name: remote.name.clone(),
                url: url::Url::parse(&remote.url)?,
                username: remote.username.clone().filter(|u| !u.is_empty()),
                password: remote.password.clone(),
                insecure: remote.insecure,
                ca,
                connections: crate::remote::client::DEFAULT_CONNECTIONS,
            })?;
            remotes.insert(remote.name.clone(), Arc::new(client));
        }
        let rules = r
            .rules
            .iter()
            .map(Rule::from_config)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(Arc::new(Replication {
            rules,
            remotes,
            remote_ids: Mutex::new(HashMap::new()),
        })))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The event sink that queues what the push rules copy.
    pub fn sink(self: &Arc<Self>) -> Arc<dyn EventSink> {
        Arc::new(ReplicationSink(self.clone()))
    }

    fn remote(&self, rule: &Rule) -> &Arc<Client> {
        // Validated: every rule names a configured registry.
        &self.remotes[&rule.remote]
    }

    /// The id `rule`'s remote gives itself (asked once, then remembered).
    async fn remote_id(&self, rule: &Rule) -> Result<Option<String>, CopyError> {
        if let Some(id) = self.remote_ids.lock().unwrap().get(&rule.remote) {
            return Ok(id.clone());
        }
        let id = self.remote(rule).ping().await?;
        self.remote_ids
            .lock()
            .unwrap()
            .insert(rule.remote.clone(), id.clone());
        Ok(id)
    }

    /// Starts every enabled rule's worker, each under its lease, until `stop`.
    pub fn spawn(
        self: &Arc<Self>,
        core: Arc<Registry>,
        meta: Arc<dyn MetaStore>,
        stop: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.rules.len())
            .filter(|&i| self.rules[i].enabled)
            .map(|i| {
                let (replication, core, meta2) = (self.clone(), core.clone(), meta.clone());
                let name = format!("replication/{}", self.rules[i].name);
                tokio::spawn(run_leased(
                    meta.clone(),
                    name,
                    lease::Holder::default(),
                    stop.clone(),
                    move |stop| {
                        let (replication, core, meta) =
                            (replication.clone(), core.clone(), meta2.clone());
                        async move {
                            if replication.rules[i].push {
                                replication.push_loop(i, &core, meta.as_ref(), stop).await
                            } else {
                                replication.pull_loop(i, &core, meta.as_ref(), stop).await
                            }
                        }
                    },
                ))
            })
            .collect()
    }

    /// Copies what the push rule `i` queued, in order, until `stop`.
    async fn push_loop(
        &self,
        i: usize,
        core: &Registry,
        meta: &dyn MetaStore,
        stop: CancellationToken,
    ) {
        let rule = &self.rules[i];
        let topic = rule.topic();
        let uploads = Uploads::new(meta, &rule.name);
        let mut resync = tokio::time::Instant::now() + rule.interval;
        while !stop.is_cancelled() {
            if !rule.interval.is_zero() && tokio::time::Instant::now() >= resync {
                resync = tokio::time::Instant::now() + rule.interval;
                match self.queue_everything(&rule.name, meta).await {
                    Ok(n) => {
                        tracing::info!(rule = %rule.name, queued = n, "queued every matching tag")
                    }
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, error = %e, "queueing every matching tag failed")
                    }
                }
            }
            let batch = match meta.outbox_peek(&topic, 32).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(rule = %rule.name, error = %e, "reading the replication queue failed");
                    pause(&stop, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                pause(&stop, POLL).await;
                continue;
            }
            for event in batch {
                let entry: Entry = match serde_json::from_value(event.payload.clone()) {
                    Ok(e) => e,
                    Err(e) => {
                        let what = ("push", "", "");
                        let why = format!("an unreadable entry: {e}");
                        let dequeue = Some((topic.as_str(), event.seq));
                        self.finish(meta, rule, dequeue, what, Err(why), &stop)
                            .await;
                        continue;
                    }
                };
                let outcome = self
                    .with_retries(rule, &stop, || {
                        self.push_entry(rule, core, &uploads, &entry)
                    })
                    .await;
                let Some(outcome) = outcome else { return };
                let action = match entry.action {
                    Action::Push => "push",
                    Action::Delete => "delete",
                };
                let reference = entry
                    .tag
                    .as_deref()
                    .or(entry.digest.as_deref())
                    .unwrap_or_default();
                let what = (action, entry.repository.as_str(), reference);
                let dequeue = Some((topic.as_str(), event.seq));
                self.finish(meta, rule, dequeue, what, outcome, &stop).await;
            }
        }
    }

    /// Runs `attempt` until it copies, is refused [`ATTEMPTS`] times, or `stop` (`None`).
    async fn with_retries<F, Fut>(
        &self,
        rule: &Rule,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Option<Result<Copied, String>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Copied, CopyError>>,
    {
        let mut refusals = 0;
        let mut tries = 0u32;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let why = match attempt().await {
                Ok(copied) => return Some(Ok(copied)),
                Err(CopyError::Retry(why)) => why,
                Err(CopyError::GiveUp(why)) => {
                    refusals += 1;
                    if refusals >= ATTEMPTS {
                        return Some(Err(why));
                    }
                    why
                }
            };
            tries += 1;
            metrics::counter!("berth_replication_retries_total", "rule" => rule.name.clone())
                .increment(1);
            let wait =
                Duration::from_millis(500u64.saturating_mul(1 << tries.min(6))).min(MAX_BACKOFF);
            tracing::warn!(rule = %rule.name, error = %why, retry_in = ?wait, "a copy failed; trying again");
            pause(stop, wait).await;
        }
    }

    /// Records what became of a copy: the rule's progress, its history and, for a queued
    /// entry (`dequeue`), its removal from the outbox, in one transaction, retried until it
    /// commits or `stop` (then the entry is copied again, which finds it done).
    async fn finish(
        &self,
        meta: &dyn MetaStore,
        rule: &Rule,
        dequeue: Option<(&str, i64)>,
        what: (&str, &str, &str),
        outcome: Result<Copied, String>,
        stop: &CancellationToken,
    ) {
        let now = crate::meta::access::now_ms();
        let (action, repository, reference) = what;
        let mut progress = ReplicationProgress {
            rule: rule.name.clone(),
            updated_at: now,
            ..ReplicationProgress::default()
        };
        let mut copy = ReplicationCopy {
            rule: rule.name.clone(),
            action: action.to_string(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            finished_at: now,
            ..ReplicationCopy::default()
        };
        match outcome {
            Ok(copied) => {
                let sent = copied.manifests > 0;
                copy.outcome = if sent || action == "delete" {
                    "copied"
                } else {
                    "skipped"
                }
                .into();
                if sent {
                    progress.images = 1;
                    metrics::counter!("berth_replication_images_total", "rule" => rule.name.clone())
                        .increment(1);
                }
                progress.bytes = copied.bytes;
                copy.bytes = copied.bytes;
            }
            Err(why) => {
                tracing::error!(rule = %rule.name, repo = repository, reference, error = %why, "a copy was given up on");
                metrics::counter!("berth_replication_failures_total", "rule" => rule.name.clone())
                    .increment(1);
                progress.failures = 1;
                progress.error = Some(format!("{repository}:{reference}: {why}"));
                copy.outcome = "failed".into();
                copy.error = Some(why);
            }
        }
        let mut changes = vec![
            Change::ReplicationProgress(progress),
            Change::ReplicationCopy(copy),
        ];
        if let Some((topic, seq)) = dequeue {
            changes.push(Change::Dequeue {
                topic: topic.to_string(),
                seq,
            });
        }
        while let Err(e) = meta.apply(changes.clone()).await {
            tracing::warn!(rule = %rule.name, error = %e, "recording a copy failed; trying again");
            pause(stop, Duration::from_secs(1)).await;
            if stop.is_cancelled() {
                return;
            }
        }
    }

    async fn push_entry(
        &self,
        rule: &Rule,
        core: &Registry,
        uploads: &Uploads<'_>,
        entry: &Entry,
    ) -> Result<Copied, CopyError> {
        let remote_id = self.remote_id(rule).await?;
        let origin = entry
            .origin
            .clone()
            .or_else(|| core.id().map(str::to_string))
            .unwrap_or_default();
        if remote_id.as_deref().is_some_and(|id| id == origin) {
            tracing::debug!(rule = %rule.name, repo = %entry.repository, "not copying back to the registry it came from");
            return Ok(Copied::default());
        }
        let from: RepoName = entry
            .repository
            .parse()
            .map_err(|e| CopyError::GiveUp(format!("{}: {e}", entry.repository)))?;
        let to = rule.renamed(&entry.repository);
        let push = Push {
            core,
            remote: self.remote(rule),
            uploads,
            origin: &origin,
            rule: &rule.name,
        };
        match entry.action {
            Action::Push => {
                let tag: Option<Tag> = entry.tag.as_deref().and_then(|t| t.parse().ok());
                let Some(digest) = entry
                    .digest
                    .as_deref()
                    .and_then(|d| d.parse::<Digest>().ok())
                else {
                    return Err(CopyError::GiveUp("a push entry without a digest".into()));
                };
                match push.manifest(&from, &to, &digest, tag.as_ref()).await {
                    // Deleted here since: nothing to copy.
                    Err(CopyError::GiveUp(why)) if !self.still_here(core, &from, &digest).await => {
                        tracing::debug!(rule = %rule.name, %why, "the manifest is gone; not copying it");
                        Ok(Copied::default())
                    }
                    other => other,
                }
            }
            Action::Delete => {
                let reference = entry
                    .tag
                    .clone()
                    .or_else(|| entry.digest.clone())
                    .ok_or_else(|| {
                        CopyError::GiveUp("a delete entry without a reference".into())
                    })?;
                push.delete(&to, &reference).await?;
                Ok(Copied::default())
            }
        }
    }

    async fn still_here(&self, core: &Registry, repo: &RepoName, digest: &Digest) -> bool {
        core.manifest(repo, &crate::oci::name::Reference::Digest(digest.clone()))
            .await
            .is_ok()
    }

    /// Lists the pull rule `i`'s source and copies what matches, every interval, until `stop`.
    async fn pull_loop(
        &self,
        i: usize,
        core: &Registry,
        meta: &dyn MetaStore,
        stop: CancellationToken,
    ) {
        let rule = &self.rules[i];
        while !stop.is_cancelled() {
            let origin = self.remote_id(rule).await.ok().flatten();
            let ctx = RequestContext {
                actor: Some(format!("replication/{}", rule.name)),
                origin,
                ..RequestContext::default()
            };
            let pass = with_request(ctx, self.pull_pass(rule, core, meta, &stop)).await;
            if let Err(why) = pass {
                tracing::warn!(rule = %rule.name, error = %why, "listing the replication source failed");
            }
            pause(&stop, rule.interval).await;
        }
    }

    async fn pull_pass(
        &self,
        rule: &Rule,
        core: &Registry,
        meta: &dyn MetaStore,
        stop: &CancellationToken,
    ) -> Result<(), CopyError> {
        let pull = Pull {
            core,
            remote: self.remote(rule),
        };
        for repo in pull.catalog().await? {
            if !rule.matches_repository(&repo) {
                continue;
            }
            let Ok(local) = rule.renamed(&repo).parse::<RepoName>() else {
                continue;
            };
            for tag in pull.tags(&repo).await? {
                if !rule.matches_tag(&tag) {
                    continue;
                }
                let Ok(tag) = tag.parse::<Tag>() else {
                    continue;
                };
                let outcome = self
                    .with_retries(rule, stop, || pull.tag(&repo, &local, &tag))
                    .await;
                let Some(outcome) = outcome else {
                    return Ok(());
                };
                // What is here already is not news.
                if matches!(&outcome, Ok(c) if c.manifests == 0) {
                    continue;
                }
                if let Ok(copied) = &outcome {
                    metrics::counter!("berth_replication_bytes_total", "rule" => rule.name.clone())
                        .increment(copied.bytes);
                }
                let what = ("pull", repo.as_str(), tag.as_str());
                self.finish(meta, rule, None, what, outcome, stop).await;
            }
        }
        Ok(())
    }

    /// Queues, for the push rule `name`, every tag here that it matches (a manual run, or the
    /// rule's interval falling due): the copy skips what the destination has. Returns how many.
    pub async fn queue_everything(
        &self,
        name: &str,
        meta: &dyn MetaStore,
    ) -> anyhow::Result<usize> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| anyhow::anyhow!("no replication rule is named {name:?}"))?;
        anyhow::ensure!(
            rule.push,
            "{name} is a pull rule: it copies on its interval"
        );
        let mut queued = 0;
        let mut changes = Vec::new();
        let mut after = None;
        loop {
            let page = crate::oci::Page {
                after: after.clone(),
                limit: Some(1000),
            };
            let repos = meta.repositories(&page).await?;
            let Some(last) = repos.last().cloned() else {
                break;
            };
            for repo in repos.iter().filter(|r| rule.matches_repository(r)) {
                let Ok(repo) = repo.parse::<RepoName>() else {
                    continue;
                };
                let mut tag_after = None;
                loop {
                    let page = crate::oci::Page {
                        after: tag_after.clone(),
                        limit: Some(1000),
                    };
                    let tags = meta.tags(&repo, &page).await?.unwrap_or_default();
                    let Some(last_tag) = tags.last().cloned() else {
                        break;
                    };
                    for tag in tags.iter().filter(|t| rule.matches_tag(t)) {
                        let Ok(tag) = tag.parse::<Tag>() else {
                            continue;
                        };
                        let reference = crate::oci::name::Reference::Tag(tag.clone());
                        let Some(m) = meta.manifest(&repo, &reference).await? else {
                            continue;
                        };
                        let entry = Entry {
                            action: Action::Push,
                            repository: repo.to_string(),
                            digest: Some(m.digest.to_string()),
                            tag: Some(tag.to_string()),
                            origin: None,
                        };
                        changes.push(Change::Enqueue {
                            topic: rule.topic(),
                            payload: serde_json::to_value(entry)?,
                        });
                        if changes.len() >= 500 {
                            queued += changes.len();
                            meta.apply(std::mem::take(&mut changes)).await?;
                        }
                    }
                    tag_after = Some(last_tag);
                }
            }
            after = Some(last);
        }
        queued += changes.len();
        if !changes.is_empty() {
            meta.apply(changes).await?;
        }
        Ok(queued)
    }

    /// The last `limit` copies (of `rule`, or of every rule), newest first, one line each.
    pub async fn history(
        meta: &dyn MetaStore,
        rule: Option<&str>,
        limit: u32,
    ) -> crate::meta::Result<Vec<String>> {
        Ok(meta
            .replication_history(rule, limit)
            .await?
            .into_iter()
            .map(|c| {
                let at = jiff::Timestamp::from_millisecond(c.finished_at)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                let sep = if c.reference.starts_with("sha256:") {
                    '@'
                } else {
                    ':'
                };
                let mut line = format!(
                    "{at} {} {} {}{sep}{} {}",
                    c.rule, c.action, c.repository, c.reference, c.outcome
                );
                if c.bytes > 0 {
                    line.push_str(&format!(", {} bytes", c.bytes));
                }
                if let Some(e) = &c.error {
                    line.push_str(&format!(": {e}"));
                }
                line
            })
            .collect())
    }

    /// One line per rule: what is queued, copied and given up on.
    pub async fn status(&self, meta: &dyn MetaStore) -> crate::meta::Result<Vec<String>> {
        let progress: HashMap<String, ReplicationProgress> = meta
            .replication_progress()
            .await?
            .into_iter()
            .map(|p| (p.rule.clone(), p))
            .collect();
        let mut lines = Vec::new();
        for rule in &self.rules {
            let queued = if rule.push {
                meta.outbox_peek(&rule.topic(), 1_000_000).await?.len()
            } else {
                0
            };
            let p = progress.get(&rule.name).cloned().unwrap_or_default();
            let mut line = format!(
                "{}: {queued} queued, {} images, {} bytes copied, {} failures",
                rule.name, p.images, p.bytes, p.failures
            );
            if let Some(e) = &p.error {
                line.push_str(&format!("; last error: {e}"));
            }
            if !rule.enabled {
                line.push_str(" (disabled)");
            }
            lines.push(line);
        }
        Ok(lines)
    }
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Queues, with each change, what the push rules copy of it.
struct ReplicationSink(Arc<Replication>);

impl EventSink for ReplicationSink {
    fn changes_for(&self, event: &RegistryEvent) -> Vec<Change> {
        self.0
            .rules
            .iter()
            .filter_map(|rule| {
                let entry = rule.entry_for(event)?;
                let payload = serde_json::to_value(entry).ok()?;
                Some(Change::Enqueue {
                    topic: rule.topic(),
                    payload,
                })
            })
            .collect()
    }

    fn wants(&self, action: EventAction) -> bool {
        matches!(action, EventAction::Push | EventAction::Delete)
            && self.0.rules.iter().any(|r| r.push && r.enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repos: &[&str], tags: &[&str], namespace: &str) -> Rule {
        Rule::from_config(&crate::config::ReplicationRule {
            name: "r".into(),
            destination: Some("dr".into()),
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            namespace: namespace.into(),
            deletes: true,
            ..crate::config::ReplicationRule::default()
        })
        .unwrap()
    }

    fn event(
        action: EventAction,
        repo: &str,
        tag: Option<&str>,
        origin: Option<&str>,
    ) -> RegistryEvent {
        let request = RequestContext {
            origin: origin.map(str::to_string),
            ..RequestContext::default()
        };
        let mut e = RegistryEvent::new(action, &repo.parse().unwrap(), &request);
        e.digest = Some(Digest::of(crate::oci::digest::Algorithm::Sha256, b"m"));
        e.media_type = Some("application/vnd.oci.image.manifest.v1+json".into());
        e.tag = tag.map(|t| t.parse().unwrap());
        e
    }

    #[test]
    fn rules_match_repositories_and_tags_by_glob() {
        let r = rule(&["team/**"], &["v*"], "");
        assert!(r
            .entry_for(&event(EventAction::Push, "team/app", Some("v1"), None))
            .is_some());
        assert!(r
            .entry_for(&event(EventAction::Push, "team/a/b", Some("v1"), None))
            .is_some());
        assert!(r
            .entry_for(&event(EventAction::Push, "other/app", Some("v1"), None))
            .is_none());
        assert!(r
            .entry_for(&event(EventAction::Push, "team/app", Some("latest"), None))
            .is_none());
        assert!(r
            .entry_for(&event(EventAction::Push, "team/app", None, None))
            .is_none());
        let mut referrer = event(EventAction::Push, "team/app", None, None);
        referrer.subject = Some(Digest::of(crate::oci::digest::Algorithm::Sha256, b"s"));
        assert!(
            r.entry_for(&referrer).is_some(),
            "a referrer goes as it is pushed"
        );
        assert!(r
            .entry_for(&event(EventAction::Pull, "team/app", Some("v1"), None))
            .is_none());
        let d = r
            .entry_for(&event(EventAction::Delete, "team/app", Some("v2"), None))
            .unwrap();
        assert_eq!(d.action, Action::Delete);
        let all = rule(&[], &[], "");
        assert!(all
            .entry_for(&event(EventAction::Push, "x", Some("anything"), None))
            .is_some());
    }

    #[test]
    fn entries_carry_the_origin() {
        let r = rule(&[], &[], "");
        let e = r
            .entry_for(&event(EventAction::Push, "a/b", Some("1"), Some("abc")))
            .unwrap();
        assert_eq!(e.origin.as_deref(), Some("abc"));
    }

    #[test]
    fn the_namespace_replaces_the_first_segment() {
        assert_eq!(rule(&[], &[], "copies").renamed("team/app"), "copies/app");
        assert_eq!(rule(&[], &[], "copies").renamed("team/a/b"), "copies/a/b");
        assert_eq!(rule(&[], &[], "copies").renamed("app"), "copies/app");
        assert_eq!(rule(&[], &[], "").renamed("team/app"), "team/app");
    }
}
