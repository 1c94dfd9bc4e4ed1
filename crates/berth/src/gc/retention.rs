//! Retention policies in Harbor's shape: rules that say which artifacts of a project to keep; a
//! run deletes the others, in the repositories the rules cover.
//!
//! A rule has a template (`latestPushedK`: the K most recently pushed; `latestPulledN`: the N
//! most recently pulled; `nDaysSinceLastPush`: pushed within N days; `nDaysSinceLastPull`:
//! pulled within N days; `always`), a tag selector (`matches` or `excludes` a doublestar
//! pattern; `extras: {"untagged": true}` makes untagged artifacts candidates too) and a
//! repository selector (`repoMatches` or `repoExcludes`, below the project). Rules are OR-ed:
//! an artifact any rule retains stays. A repository no enabled rule covers is left alone.
//! A policy whose trigger is `{"kind": "Schedule", "settings": {"cron": "..."}}` also runs on
//! that schedule ([`run_due`], under the retention lease on one instance), recorded with
//! trigger `SCHEDULE`; an empty cron means runs by API call only.
//! Artifacts are the top-level manifests (an index carries its children, a signature its
//! subject); deleting one is the core's `delete_manifest`, so immutable tags still hold (the
//! artifact stays and the refusal is recorded) and what it referenced goes at the next garbage
//! collection. Every decision is in the run's tasks: per repository, what was examined, kept
//! and deleted, and why not when a delete was refused.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::auth::policy::pattern;
use crate::meta::access::{
    AccessStore, ArtifactSelection, ArtifactSummary, PageRequest, Project, RetentionExecution,
    RetentionRecord,
};
use crate::oci::name::{Reference, RepoName};
use crate::registry::{Registry, RegistryError};

use super::schedule::Schedule;

/// What a rule keeps of the artifacts it selects.
#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    LatestPushed(usize),
    LatestPulled(usize),
    PushedWithinDays(i64),
    PulledWithinDays(i64),
    Always,
}

/// One rule of a policy.
#[derive(Clone, Debug)]
pub struct Rule {
    pub disabled: bool,
    pub template: Template,
    tags: globset::GlobMatcher,
    tags_excluded: bool,
    untagged: bool,
    repos: globset::GlobMatcher,
    repos_excluded: bool,
}

/// The templates this implementation runs, as Harbor's `/retentions/metadatas` lists them.
pub fn templates() -> Value {
    json!([
        {"rule_template": "latestPushedK", "display_text": "the most recently pushed # artifacts",
         "action": "retain", "params": [{"type": "int", "unit": "COUNT", "required": true}]},
        {"rule_template": "latestPulledN", "display_text": "the most recently pulled # artifacts",
         "action": "retain", "params": [{"type": "int", "unit": "COUNT", "required": true}]},
        {"rule_template": "nDaysSinceLastPush", "display_text": "pushed within the last # days",
         "action": "retain", "params": [{"type": "int", "unit": "DAYS", "required": true}]},
        {"rule_template": "nDaysSinceLastPull", "display_text": "pulled within the last # days",
         "action": "retain", "params": [{"type": "int", "unit": "DAYS", "required": true}]},
        {"rule_template": "always", "display_text": "always", "action": "retain", "params": []},
    ])
}

/// The rules of Harbor's `RetentionPolicy` JSON, or what is wrong with it.
pub fn parse(policy: &Value) -> Result<Vec<Rule>, String> {
    if let Some(a) = policy["algorithm"].as_str().filter(|a| *a != "or") {
        return Err(format!("the only algorithm is \"or\", not {a:?}"));
    }
    let rules = policy["rules"]
        .as_array()
        .ok_or("a retention policy needs a rules array")?;
    if rules.is_empty() || rules.len() > 15 {
        return Err(format!("a policy has 1 to 15 rules, not {}", rules.len()));
    }
    rules.iter().map(rule).collect()
}

fn rule(r: &Value) -> Result<Rule, String> {
    if let Some(a) = r["action"].as_str().filter(|a| *a != "retain") {
        return Err(format!("the only action is \"retain\", not {a:?}"));
    }
    let template = r["template"].as_str().ok_or("a rule needs a template")?;
    let param = |name: &str| {
        r["params"][name]
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("the {template} template needs params.{name}, a number ≥ 0"))
    };
    let template = match template {
        "latestPushedK" => Template::LatestPushed(param("latestPushedK")? as usize),
        "latestPulledN" => Template::LatestPulled(param("latestPulledN")? as usize),
        "nDaysSinceLastPush" => Template::PushedWithinDays(param("nDaysSinceLastPush")?),
        "nDaysSinceLastPull" => Template::PulledWithinDays(param("nDaysSinceLastPull")?),
        "always" => Template::Always,
        other => return Err(format!("unknown rule template {other:?}")),
    };
    let one = |v: &Value, what: &str| -> Result<(String, String, Value), String> {
        match v.as_array().map(Vec::as_slice) {
            Some([s]) => Ok((
                s["decoration"].as_str().unwrap_or_default().to_string(),
                s["pattern"].as_str().unwrap_or_default().to_string(),
                s["extras"].clone(),
            )),
            _ => Err(format!("a rule has exactly one {what} selector")),
        }
    };
    let (tag_decoration, tag_pattern, extras) = one(&r["tag_selectors"], "tag")?;
    let (repo_decoration, repo_pattern, _) =
        one(&r["scope_selectors"]["repository"], "repository")?;
    let tags_excluded = match tag_decoration.as_str() {
        "matches" => false,
        "excludes" => true,
        d => return Err(format!("a tag selector is matches or excludes, not {d:?}")),
    };
    let repos_excluded = match repo_decoration.as_str() {
        "repoMatches" => false,
        "repoExcludes" => true,
        d => {
            return Err(format!(
                "a repository selector is repoMatches or repoExcludes, not {d:?}"
            ))
        }
    };
    // Harbor writes extras as a JSON string: `"{\"untagged\":true}"`.
    let extras = match extras {
        Value::String(s) if !s.is_empty() => {
            serde_json::from_str(&s).map_err(|e| format!("tag selector extras: {e}"))?
        }
        v => v,
    };
    Ok(Rule {
        disabled: r["disabled"].as_bool().unwrap_or(false),
        template,
        tags: pattern(&tag_pattern)?,
        tags_excluded,
        untagged: extras["untagged"].as_bool().unwrap_or(false),
        repos: pattern(&repo_pattern)?,
        repos_excluded,
    })
}

impl Rule {
    fn covers(&self, below: &str) -> bool {
        !self.disabled && self.repos.is_match(below) != self.repos_excluded
    }

    fn selects(&self, a: &ArtifactSummary) -> bool {
        if a.tags.is_empty() {
            return self.untagged;
        }
        a.tags
            .iter()
            .any(|t| self.tags.is_match(&t.name) != self.tags_excluded)
    }

    /// The digests (as text) this rule retains of `artifacts`, at `now` (Unix seconds).
    /// Artifacts never pulled come last by pull time and are never pulled "within" a period.
    fn retains(&self, artifacts: &[ArtifactSummary], now: i64) -> Vec<String> {
        let mut chosen: Vec<&ArtifactSummary> =
            artifacts.iter().filter(|a| self.selects(a)).collect();
        let by_pull = matches!(
            self.template,
            Template::LatestPulled(_) | Template::PulledWithinDays(_)
        );
        let time = |a: &ArtifactSummary| {
            if by_pull {
                a.pulled_at.unwrap_or(i64::MIN)
            } else {
                a.pushed_at
            }
        };
        chosen.sort_by(|a, b| {
            time(b)
                .cmp(&time(a))
                .then_with(|| a.digest.to_string().cmp(&b.digest.to_string()))
        });
        let within = |days: i64| now - days * 24 * 3600;
        let kept: Vec<&ArtifactSummary> = match self.template {
            Template::LatestPushed(k) | Template::LatestPulled(k) => {
                chosen.into_iter().take(k).collect()
            }
            Template::PushedWithinDays(n) | Template::PulledWithinDays(n) => chosen
                .into_iter()
                .filter(|a| time(a) >= within(n))
                .collect(),
            Template::Always => chosen,
        };
        kept.iter().map(|a| a.digest.to_string()).collect()
    }
}

/// The lease under which scheduled retention runs happen.
pub const LEASE: &str = "retention";

/// The schedule of a policy's trigger (`None`: runs by API call only), or what is wrong with it.
pub fn schedule_of(policy: &Value) -> Result<Option<Schedule>, String> {
    let trigger = &policy["trigger"];
    let cron = trigger["settings"]["cron"].as_str().unwrap_or("").trim();
    match trigger["kind"].as_str().unwrap_or("Schedule") {
        "Schedule" if cron.is_empty() => Ok(None),
        "Schedule" => Schedule::parse(cron)
            .map(Some)
            .map_err(|e| format!("trigger.settings.cron: {e}")),
        other => Err(format!(
            "a retention trigger's kind is Schedule, not {other:?}"
        )),
    }
}

/// Runs every policy whose schedule fell due since its last scheduled run (or since it was set,
/// when it has none). Returns each run made, or why a policy could not run.
pub async fn run_due(
    core: &Registry,
    access: &dyn AccessStore,
) -> Result<Vec<Result<RetentionExecution, String>>, String> {
    let now = crate::meta::access::now_ms();
    let mut runs = Vec::new();
    for policy in access
        .retention_policies()
        .await
        .map_err(|e| e.to_string())?
    {
        let Ok(Some(schedule)) = schedule_of(&policy.policy) else {
            continue;
        };
        let last = access
            .retention_executions(
                policy.id,
                PageRequest {
                    page: 1,
                    page_size: 1000,
                },
            )
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .find(|e| e.trigger == SCHEDULED)
            .map(|e| e.started_at);
        let since = last.unwrap_or(policy.updated_at).max(policy.updated_at);
        if !schedule.due(since, now) {
            continue;
        }
        let Some(project) = access
            .project(policy.project_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let run = execute(core, access, &project, &policy, false, SCHEDULED).await;
        match &run {
            Ok(r) => tracing::info!(project = %project.name, execution = r.id, status = %r.status,
                                    "scheduled retention run finished"),
            Err(e) => tracing::warn!(project = %project.name, error = %e,
                                     "scheduled retention run failed"),
        }
        runs.push(run);
    }
    Ok(runs)
}

/// The trigger of a run made by the schedule.
pub const SCHEDULED: &str = "SCHEDULE";

const ALL: PageRequest = PageRequest {
    page: 1,
    page_size: 100_000,
};

/// Runs `policy` over `project`: deletes (or, dry, lists) what no rule retains. The run is
/// recorded; its id and record are returned.
pub async fn execute(
    core: &Registry,
    access: &dyn AccessStore,
    project: &Project,
    policy: &RetentionRecord,
    dry_run: bool,
    trigger: &str,
) -> Result<RetentionExecution, String> {
    let rules = parse(&policy.policy)?;
    let started_at = crate::meta::access::now_ms();
    let now = started_at / 1000;
    let prefix = format!("{}/", project.name);
    let repos = access
        .repository_summaries(&prefix, None, ALL)
        .await
        .map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    let mut failed = false;
    for repo in &repos.items {
        let below = repo
            .name
            .as_str()
            .strip_prefix(&prefix)
            .unwrap_or(repo.name.as_str());
        let applicable: Vec<&Rule> = rules.iter().filter(|r| r.covers(below)).collect();
        if applicable.is_empty() {
            continue;
        }
        let task_started = crate::meta::access::now_ms();
        let artifacts = access
            .artifact_summaries(&repo.name, ArtifactSelection::TopLevel, ALL)
            .await
            .map_err(|e| e.to_string())?
            .items;
        let retained: HashSet<String> = applicable
            .iter()
            .flat_map(|r| r.retains(&artifacts, now))
            .collect();
        let mut deleted = Vec::new();
        let mut refused = Vec::new();
        for a in artifacts
            .iter()
            .filter(|a| !retained.contains(&a.digest.to_string()))
        {
            let tags: Vec<&str> = a.tags.iter().map(|t| t.name.as_str()).collect();
            let what = json!({"digest": a.digest.to_string(), "tags": tags});
            if dry_run {
                deleted.push(what);
                continue;
            }
            match delete(core, &repo.name, a).await {
                Ok(()) => {
                    tracing::info!(repository = %repo.name, digest = %a.digest, "retention: deleted");
                    deleted.push(what);
                }
                Err(RegistryError::ManifestUnknown(_)) => {}
                Err(e @ RegistryError::Denied(_)) => {
                    refused.push(json!({"digest": a.digest.to_string(), "reason": e.to_string()}))
                }
                Err(e) => {
                    failed = true;
                    refused.push(json!({"digest": a.digest.to_string(), "reason": e.to_string()}));
                }
            }
        }
        tasks.push(json!({
            "repository": repo.name.as_str(),
            "total": artifacts.len(),
            "retained": artifacts.len() - deleted.len(),
            "deleted": deleted,
            "refused": refused,
            "start_time": task_started,
            "end_time": crate::meta::access::now_ms(),
        }));
    }
    let mut run = RetentionExecution {
        id: 0,
        policy_id: policy.id,
        dry_run,
        trigger: trigger.into(),
        status: if failed { "Error" } else { "Success" }.into(),
        started_at,
        finished_at: crate::meta::access::now_ms(),
        tasks: Value::Array(tasks),
    };
    run.id = access
        .add_retention_execution(&run)
        .await
        .map_err(|e| e.to_string())?;
    Ok(run)
}

async fn delete(
    core: &Registry,
    repo: &RepoName,
    a: &ArtifactSummary,
) -> Result<(), RegistryError> {
    core.delete_manifest(repo, &Reference::Digest(a.digest.clone()))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::{Algorithm, Digest};

    fn art(name: &str, pushed_at: i64, tags: &[&str]) -> ArtifactSummary {
        ArtifactSummary {
            digest: Digest::of(Algorithm::Sha256, name.as_bytes()),
            media_type: String::new(),
            artifact_type: None,
            size: 1,
            pushed_at,
            pulled_at: None,
            tags: tags
                .iter()
                .map(|t| crate::meta::access::TagSummary {
                    name: t.to_string(),
                    pushed_at,
                    pulled_at: None,
                })
                .collect(),
            children: Vec::new(),
        }
    }

    fn pulled(mut a: ArtifactSummary, at: i64) -> ArtifactSummary {
        a.pulled_at = Some(at);
        a
    }

    #[test]
    fn pull_rules_rank_by_the_last_pull_and_never_pulled_comes_last() {
        let day = 24 * 3600;
        // Pushed in one order, pulled in another; "d" was never pulled.
        let arts = vec![
            pulled(art("a", 400, &["v1"]), 9 * day),
            pulled(art("b", 300, &["v2"]), 2 * day),
            pulled(art("c", 200, &["v3"]), 8 * day),
            art("d", 500, &["v4"]),
        ];
        let digest = |n: &str| Digest::of(Algorithm::Sha256, n.as_bytes()).to_string();
        let keep = |p: Value| -> Vec<String> {
            let mut kept: Vec<String> = parse(&p)
                .unwrap()
                .iter()
                .flat_map(|r| r.retains(&arts, 10 * day))
                .collect();
            kept.sort();
            kept
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            keep(policy(
                "latestPulledN",
                json!({"latestPulledN": 2}),
                "**",
                false
            )),
            sorted(vec![digest("a"), digest("c")])
        );
        assert_eq!(
            keep(policy(
                "latestPulledN",
                json!({"latestPulledN": 3}),
                "**",
                false
            )),
            sorted(vec![digest("a"), digest("b"), digest("c")])
        );
        assert_eq!(
            keep(policy(
                "nDaysSinceLastPull",
                json!({"nDaysSinceLastPull": 3}),
                "**",
                false
            )),
            sorted(vec![digest("a"), digest("c")])
        );
        // The push templates still rank by push time: "d" is the latest pushed.
        assert_eq!(
            keep(policy(
                "latestPushedK",
                json!({"latestPushedK": 1}),
                "**",
                false
            )),
            vec![digest("d")]
        );
    }

    fn policy(template: &str, params: Value, tag: &str, untagged: bool) -> Value {
        json!({"algorithm": "or", "rules": [{
            "disabled": false, "action": "retain", "template": template, "params": params,
            "tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": tag,
                               "extras": format!("{{\"untagged\":{untagged}}}")}],
            "scope_selectors": {"repository": [
                {"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]}}]})
    }

    #[test]
    fn rules_keep_what_their_templates_say() {
        let arts = vec![
            art("a", 100, &["v1"]),
            art("b", 300, &["v2"]),
            art("c", 200, &["dev"]),
            art("d", 400, &[]),
        ];
        let keep = |p: Value| -> Vec<String> {
            let rules = parse(&p).unwrap();
            let mut kept: Vec<String> = rules
                .iter()
                .flat_map(|r| r.retains(&arts, 10 * 24 * 3600))
                .collect();
            kept.sort();
            kept
        };
        let digest = |n: &str| Digest::of(Algorithm::Sha256, n.as_bytes()).to_string();
        let mut want = vec![digest("b")];
        assert_eq!(
            keep(policy(
                "latestPushedK",
                json!({"latestPushedK": 1}),
                "v*",
                false
            )),
            want
        );
        want = vec![digest("b"), digest("d")];
        want.sort();
        assert_eq!(
            keep(policy(
                "latestPushedK",
                json!({"latestPushedK": 2}),
                "v*",
                true
            )),
            want
        );
        assert!(keep(policy(
            "nDaysSinceLastPush",
            json!({"nDaysSinceLastPush": 1}),
            "**",
            true
        ))
        .is_empty());
        assert_eq!(
            keep(policy(
                "nDaysSinceLastPush",
                json!({"nDaysSinceLastPush": 10}),
                "**",
                false
            ))
            .len(),
            3
        );
        assert_eq!(
            keep(policy("always", json!({}), "dev", false)),
            vec![digest("c")]
        );
        for bad in [
            policy("latestPulledN", json!({}), "**", false),
            policy("latestPushedK", json!({}), "**", false),
            policy("nope", json!({}), "**", false),
            json!({"rules": []}),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
