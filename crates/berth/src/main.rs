//! The `berth` command line: loads the configuration (Distribution's `config.yml` format, with
//! `REGISTRY_*` overrides), sets up logging, and runs the registry or one of its tools.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use berth::config::{self, Loaded, Status};
use berth::logging::{self, Format};
use berth::server::{self, Settings};

#[derive(Parser)]
#[command(name = "berth", version, about = "An OCI container image registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// A Distribution-format configuration file (`config.yml`, version 0.1). Without one,
        /// Berth's defaults apply (data in ./berth-data, listening on 0.0.0.0:5000).
        config: Option<PathBuf>,
        /// The configuration file, as a flag.
        #[arg(long = "config", value_name = "FILE", conflicts_with = "config")]
        config_flag: Option<PathBuf>,
        /// Address to listen on (overrides http.addr).
        #[arg(long, env = "BERTH_ADDR")]
        addr: Option<String>,
        /// Data directory for blobs, uploads and the metadata database (overrides the storage
        /// section with a filesystem root).
        #[arg(long, env = "BERTH_DATA")]
        data: Option<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Index storage written by another registry into Berth's metadata, without copying blobs.
    #[command(subcommand)]
    Import(ImportSource),
    /// Users of the built-in token service (`auth.builtin`).
    #[command(subcommand)]
    User(UserCommand),
    /// Projects (the first path component of repository names) and their members.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Robot accounts (`robot$<project>+<name>`), for CI and other automation.
    #[command(subcommand)]
    Robot(RobotCommand),
    /// The built-in token service's signing keys.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log, newest first: logins, token grants and denials, pushes, pulls, deletes
    /// and account changes, with who, when and from where.
    Audit {
        /// Only entries of this user or robot.
        #[arg(long)]
        user: Option<String>,
        /// Only this operation (`login`, `token`, `create`, `pull`, `delete`, ...).
        #[arg(long)]
        operation: Option<String>,
        /// Only resources starting with this (e.g. `team/app`).
        #[arg(long)]
        resource: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replication between this registry and others.
    Replication {
        #[command(subcommand)]
        command: ReplicationCommand,
    },
    /// Collect garbage now, with the configuration `serve` runs with; safe while servers run.
    /// Deletes repository links no manifest names, then blobs nothing references, and with
    /// --untagged manifests no tag, index or live subject keeps: whatever was referenced within
    /// the grace period stays.
    Gc {
        /// Print what would be deleted, and how many bytes, without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Keep what was referenced within this long (`30m`, `2h`; default: `gc.grace`).
        #[arg(long, value_name = "DURATION")]
        grace: Option<config::GoDuration>,
        /// Also delete untagged manifests (default: `gc.untagged`).
        #[arg(long)]
        untagged: bool,
        /// Object deletes in flight at once (default: `gc.parallelism`).
        #[arg(long, value_name = "N")]
        parallelism: Option<usize>,
        /// The share of its time the run works, pausing the rest (0.01 to 1; default:
        /// `gc.pace`).
        #[arg(long, value_name = "SHARE")]
        pace: Option<f64>,
        /// Print the last runs instead of running.
        #[arg(long)]
        history: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ReplicationCommand {
    /// What each rule of the configuration has queued, copied and given up on.
    Status {
        /// The configuration file `berth serve` runs with (as --config).
        file: Option<PathBuf>,
        /// Also the last N copies, newest first, with why those that failed did.
        #[arg(long, value_name = "N")]
        history: Option<u32>,
        /// Only this rule's history.
        #[arg(long)]
        rule: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Queues every tag a push rule matches, for the servers to copy (what the destination has
    /// already is skipped): the first copy of what was there before the rule, or a resync.
    Run {
        /// The rule.
        rule: String,
        /// The configuration file `berth serve` runs with (as --config).
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the users, projects and robots are: the metadata database of this configuration.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// The configuration file `berth serve` runs with.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory `berth serve --data` runs with.
    #[arg(long, env = "BERTH_DATA")]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a local user; the password is read from BERTH_PASSWORD or the first line of stdin.
    Add {
        name: String,
        /// A system administrator (every project, every action).
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long, default_value = "")]
        realname: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a user and their memberships.
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a user's password (from BERTH_PASSWORD or the first line of stdin).
    Passwd {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Add a project.
    Add {
        name: String,
        /// Anyone may pull, without logging in.
        #[arg(long)]
        public: bool,
        /// A user to make its project admin.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List projects.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a project, its members and its robots (its repositories stay).
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Members of a project.
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Give a user, or the members of an LDAP group, a role in a project: projectAdmin (1),
    /// developer (2), guest (3), maintainer (4), limitedGuest (5).
    Add {
        project: String,
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        user: Option<String>,
        /// The DN of an LDAP group (`cn=devs,ou=groups,dc=example,dc=org`) instead of a user:
        /// its members hold the role while the directory lists them in it at their login.
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List a project's members.
    List {
        project: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a user, or an LDAP group (`--group DN`), from a project.
    Rm {
        project: String,
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        user: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Add a robot to a project; prints its name and secret (shown only now).
    Add {
        project: String,
        name: String,
        /// Repository actions: any of pull, push, delete, comma-separated.
        #[arg(long, default_value = "pull")]
        access: String,
        /// Days until it expires; -1 never.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        days: i64,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List robots, of one project or all.
    List {
        project: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a robot (its full name, `robot$<project>+<name>`).
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print the certificates of the keys that sign tokens (PEM): the `auth.token.rootcertbundle`
    /// of another registry that uses this token service.
    Certificate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace the signing key now; tokens signed by the old one verify until they expire.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with `REGISTRY_*` overrides), print the effective
    /// configuration with secrets masked, and list which options are active.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// A CNCF Distribution (registry:2) storage root directory (the one holding `docker/`).
    /// Idempotent and resumable; `berth serve` runs it automatically on first start.
    Distribution {
        /// The root directory.
        dir: PathBuf,
        /// Index into the metadata database this configuration file names (its `database` or
        /// `sqlite` section) instead of the SQLite file under the root directory.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Loads the configuration file (or Berth's defaults) with the process environment's overrides.
fn load(file: Option<&PathBuf>) -> anyhow::Result<Loaded> {
    let loaded = match file {
        Some(path) => config::load_file(path, std::env::vars())
            .with_context(|| format!("configuration {}", path.display()))?,
        None => config::load(server::DEFAULT_CONFIG, std::env::vars())
            .context("configuration from the environment")?,
    };
    Ok(loaded)
}

fn init_logging(cfg: &config::Config) -> tracing_appender::non_blocking::WorkerGuard {
    let format = match cfg.log.formatter {
        config::LogFormatter::Json => Format::Json,
        config::LogFormatter::Logstash => Format::Logstash,
        _ => Format::Text,
    };
    let fields = cfg
        .log
        .fields
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
        .collect();
    let level = format!("{},tower_http=warn", cfg.log.level.as_str());
    logging::init(&level, format, fields)
}

mod accounts {
    //! `berth user`, `berth project`, `berth robot`, `berth token`: the account operations of
    //! the REST API, on the database of a configuration.

    use std::io::BufRead;
    use std::sync::Arc;

    use anyhow::Context;
    use berth::auth::accounts::{normalize_dn, Accounts, Actor, RobotSpec, UserSpec};
    use berth::auth::ldap::first_rdn_value;
    use berth::auth::rbac::{Action, RobotAccess, RobotPermission, Role};
    use berth::meta::access::{AccessStore, AuditQuery, MemberEntity, PageRequest};

    use super::UserCommand;
    use super::{MemberCommand, ProjectCommand, RobotCommand, StoreArgs, TokenCommand};

    const ALL: PageRequest = PageRequest {
        page: 1,
        page_size: 100_000,
    };

    async fn open(args: &StoreArgs) -> anyhow::Result<Arc<dyn AccessStore>> {
        let settings = super::settings_of(args)?;
        Ok(berth::server::open_databases(&settings.meta).await?.1)
    }

    /// The account operations on the database of `args`, audited as the command line's
    /// operator.
    async fn accounts_of(args: &StoreArgs) -> anyhow::Result<Accounts> {
        Ok(Accounts::new(open(args).await?).by(Actor::command_line()))
    }

    fn password() -> anyhow::Result<String> {
        if let Ok(p) = std::env::var("BERTH_PASSWORD") {
            return Ok(p);
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    pub async fn user(c: UserCommand) -> anyhow::Result<()> {
        match c {
            UserCommand::Add {
                name,
                admin,
                email,
                realname,
                store,
            } => {
                let accounts = accounts_of(&store).await?;
                let spec = UserSpec {
                    username: name.clone(),
                    password: password()?,
                    email,
                    realname,
                    sysadmin: admin,
                    ..UserSpec::default()
                };
                let user = accounts.add_user(spec).await?;
                println!("added user {} (id {})", user.username, user.id);
            }
            UserCommand::List { store } => {
                let accounts = accounts_of(&store).await?;
                for u in accounts.users(None, ALL).await?.items {
                    let admin = if u.sysadmin { " admin" } else { "" };
                    println!("{}\t{}\t{:?}{admin}", u.id, u.username, u.source);
                }
            }
            UserCommand::Rm { name, store } => {
                let accounts = accounts_of(&store).await?;
                let user = accounts.user(&name).await?;
                accounts.remove_user(&user).await?;
                println!("removed user {name}");
            }
            UserCommand::Passwd { name, store } => {
                let accounts = accounts_of(&store).await?;
                let user = accounts.user(&name).await?;
                accounts.set_password(&user, &password()?).await?;
                println!("password of {name} changed");
            }
        }
        Ok(())
    }

    pub async fn project(c: ProjectCommand) -> anyhow::Result<()> {
        match c {
            ProjectCommand::Add {
                name,
                public,
                owner,
                store,
            } => {
                let accounts = accounts_of(&store).await?;
                let owner = match owner {
                    Some(o) => Some(accounts.user(&o).await?.id),
                    None => None,
                };
                let p = accounts.add_project(&name, public, owner).await?;
                println!("added project {} (id {})", p.name, p.id);
            }
            ProjectCommand::List { store } => {
                let store = open(&store).await?;
                for p in store.projects(None, None, None, ALL).await?.items {
                    let public = if p.public { "public" } else { "private" };
                    println!("{}\t{}\t{public}", p.id, p.name);
                }
            }
            ProjectCommand::Rm { name, store } => {
                let accounts = accounts_of(&store).await?;
                let p = accounts.project(&name).await?;
                accounts.remove_project(&p).await?;
                println!("removed project {name}");
            }
            ProjectCommand::Member(m) => member(m).await?,
        }
        Ok(())
    }

    async fn member(c: MemberCommand) -> anyhow::Result<()> {
        match c {
            MemberCommand::Add {
                project,
                user,
                group,
                role,
                store,
            } => {
                let accounts = accounts_of(&store).await?;
                let role = Role::from_name(&role).with_context(|| {
                    format!("unknown role {role}: projectAdmin, developer, guest, maintainer, limitedGuest")
                })?;
                let p = accounts.project(&project).await?;
                let who = match (user, group) {
                    (_, Some(dn)) => {
                        let name = first_rdn_value(&dn).unwrap_or_else(|| dn.clone());
                        accounts.add_group_member(&p, &name, &dn, role.id()).await?;
                        format!("the members of {dn} are")
                    }
                    (Some(user), None) => {
                        accounts.add_user_member(&p, &user, role.id()).await?;
                        format!("{user} is")
                    }
                    (None, None) => anyhow::bail!("name a user or an LDAP group (--group DN)"),
                };
                println!("{who} now {} of {project}", role.name());
            }
            MemberCommand::List { project, store } => {
                let accounts = accounts_of(&store).await?;
                let p = accounts.project(&project).await?;
                for m in accounts.members(p.id).await? {
                    let role = Role::from_id(m.role).map_or("?", Role::name);
                    println!("{}\t{}\t{role}", m.id, m.entity_name);
                }
            }
            MemberCommand::Rm {
                project,
                user,
                group,
                store,
            } => {
                let accounts = accounts_of(&store).await?;
                let p = accounts.project(&project).await?;
                let members = accounts.members(p.id).await?;
                let mut found = None;
                for m in &members {
                    let matches = match (&m.entity, &user, &group) {
                        (MemberEntity::Group(id), _, Some(dn)) => {
                            let group = accounts.store().group(*id).await?;
                            group.is_some_and(|g| g.ldap_dn == normalize_dn(dn))
                        }
                        (MemberEntity::User(_), Some(user), None) => m.entity_name == *user,
                        _ => false,
                    };
                    if matches {
                        found = Some(m);
                        break;
                    }
                }
                let who = group.or(user).unwrap_or_default();
                let m = found.with_context(|| format!("{who} is not a member of {project}"))?;
                accounts.remove_member(&p, m).await?;
                println!("removed {who} from {project}");
            }
        }
        Ok(())
    }

    pub async fn robot(c: RobotCommand) -> anyhow::Result<()> {
        match c {
            RobotCommand::Add {
                project,
                name,
                access,
                days,
                description,
                store,
            } => {
                let accounts = accounts_of(&store).await?;
                let mut list = Vec::new();
                for word in access.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    let action = match word {
                        "pull" => Action::Pull,
                        "push" => Action::Push,
                        "delete" => Action::Delete,
                        other => anyhow::bail!("unknown action {other}: pull, push or delete"),
                    };
                    list.push(RobotAccess {
                        resource: "repository".into(),
                        action: action.as_str().into(),
                        effect: None,
                    });
                }
                let spec = RobotSpec {
                    project: Some(project.clone()),
                    name,
                    description,
                    duration_days: days,
                    permissions: vec![RobotPermission {
                        kind: "project".into(),
                        namespace: project,
                        access: list,
                    }],
                    disabled: false,
                    creator: "berth robot add".into(),
                };
                let (robot, secret) = accounts.add_robot(spec).await?;
                println!("name: {}", robot.name);
                println!("secret: {secret}");
            }
            RobotCommand::List { project, store } => {
                let accounts = accounts_of(&store).await?;
                let project_id = match project {
                    Some(p) => Some(accounts.project(&p).await?.id),
                    None => None,
                };
                for r in accounts.store().robots(project_id, ALL).await?.items {
                    let state = if r.disabled { "disabled" } else { "enabled" };
                    println!("{}\t{}\t{state}\t{}", r.id, r.name, r.permissions);
                }
            }
            RobotCommand::Rm { name, store } => {
                let accounts = accounts_of(&store).await?;
                let r = accounts.robot(&name).await?;
                accounts.remove_robot(&r).await?;
                println!("removed {name}");
            }
        }
        Ok(())
    }

    /// Prints up to `limit` entries of the audit log matching `query`, newest first.
    pub async fn audit(
        query: AuditQuery,
        limit: u32,
        json: bool,
        store: StoreArgs,
    ) -> anyhow::Result<()> {
        let page = PageRequest {
            page: 1,
            page_size: limit.max(1),
        };
        let listing = open(&store).await?.audit_log(&query, page).await?;
        for e in listing.items {
            let at = berth::time::rfc3339_ms(e.at);
            if json {
                let line = serde_json::json!({
                    "id": e.id, "op_time": at, "username": e.username,
                    "operation": e.operation, "resource_type": e.resource_type,
                    "resource": e.resource, "client": e.client, "success": e.success,
                    "detail": e.detail,
                });
                println!("{line}");
            } else {
                let who = if e.username.is_empty() {
                    "-"
                } else {
                    &e.username
                };
                let outcome = if e.success { "ok" } else { "denied" };
                println!(
                    "{at}  {who}  {} {} {}  {outcome}  from {}  {}",
                    e.operation, e.resource_type, e.resource, e.client, e.detail
                );
            }
        }
        Ok(())
    }

    pub async fn token(c: TokenCommand) -> anyhow::Result<()> {
        let (TokenCommand::Certificate { store } | TokenCommand::Rotate { store }) = &c;
        let builtin = super::settings_of(store)?
            .config
            .auth
            .builtin
            .unwrap_or_default();
        let ring = berth::auth::keyring::KeyRing::open(
            open(store).await?,
            berth::auth::builtin::key_overlap(&builtin),
            std::time::Duration::ZERO,
        )
        .await?;
        match c {
            TokenCommand::Certificate { .. } => print!("{}", ring.certificates().await?),
            TokenCommand::Rotate { .. } => println!("signing with key {}", ring.rotate().await?),
        }
        Ok(())
    }
}

/// The settings of `berth serve` for a configuration (and data directory).
fn settings_of(args: &StoreArgs) -> anyhow::Result<Settings> {
    let mut cfg = load(args.config.as_ref())?.config;
    if let Some(data) = &args.data {
        cfg.storage.inmemory = None;
        cfg.storage.filesystem = Some(config::Filesystem {
            rootdirectory: data.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    Settings::from_config(&cfg)
}

/// `berth replication run|status`, on the configuration's rules and metadata store.
async fn replication_command(command: ReplicationCommand) -> anyhow::Result<()> {
    let (file, mut store) = match &command {
        ReplicationCommand::Run { file, store, .. }
        | ReplicationCommand::Status { file, store, .. } => (file.clone(), store.clone()),
    };
    if store.config.is_none() {
        store.config = file;
    }
    let settings = settings_of(&store)?;
    let Some(replication) = berth::replication::Replication::from_config(&settings.config)? else {
        anyhow::bail!("no replication rules are configured");
    };
    let meta = server::open_meta(&settings.meta).await?;
    let mut lines = Vec::new();
    match command {
        ReplicationCommand::Run { rule, .. } => {
            let n = replication.queue_everything(&rule, meta.as_ref()).await?;
            lines.push(format!("{rule}: {n} tags queued"));
        }
        ReplicationCommand::Status { history, rule, .. } => {
            lines.extend(replication.status(meta.as_ref()).await?);
            if let Some(n) = history {
                let copies =
                    berth::replication::Replication::history(meta.as_ref(), rule.as_deref(), n);
                lines.extend(copies.await?);
            }
        }
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// `berth gc`: one collection under the collection lease (or the history of runs).
async fn collect(
    settings: Settings,
    opts: berth::gc::Options,
    history: bool,
) -> anyhow::Result<()> {
    use berth::meta::MetaStore;
    let (store, redirect) = server::open_blob_store(&settings).await?;
    let (meta, access) = server::open_databases(&settings.meta).await?;
    let meta: std::sync::Arc<dyn MetaStore> = meta;
    if history {
        for r in meta.collection_runs(20).await? {
            println!(
                "{}	{}	{}{}	blobs {}	manifests {}	links {}	bytes {}	{}",
                r.id,
                berth::time::rfc3339_ms(r.started_at),
                r.status,
                if r.dry_run { " (dry run)" } else { "" },
                r.blobs_deleted,
                r.manifests_deleted,
                r.links_removed,
                r.bytes_freed,
                r.detail
            );
        }
        return Ok(());
    }
    let projects = settings.config.auth.builtin.is_some().then_some(access);
    let core = std::sync::Arc::new(server::build_core(
        &settings,
        meta.clone(),
        projects,
        store.clone(),
        redirect,
    )?);
    let collector = berth::gc::Collector::new(core, meta.clone(), store);
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "collecting {spinner} {pos} examined ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        on_signal.cancel();
    });
    let started = std::time::Instant::now();
    let ran = berth::meta::lease::run_once_leased(
        meta.clone(),
        berth::gc::LEASE,
        std::time::Duration::from_secs(10),
        collector.run(&opts, &bar, &stop),
    )
    .await?;
    bar.finish_and_clear();
    let Some(report) = ran else {
        let holder = meta.lease_holder(berth::gc::LEASE).await?;
        anyhow::bail!(
            "another collection is running (held by {}); try again when it is done, or within \
             10 s if that process is gone",
            holder
                .map(|l| l.holder)
                .unwrap_or_else(|| "another instance".into())
        );
    };
    let report = report?;
    for line in &report.would_delete {
        println!("would delete {line}");
    }
    let verb = if opts.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    println!(
        "{verb} {} manifests, {} links, {} blobs; {} bytes {}in {:.1?}{}",
        report.manifests_deleted,
        report.links_removed,
        report.blobs_deleted,
        report.bytes_freed,
        if opts.dry_run {
            "would be freed "
        } else {
            "freed "
        },
        started.elapsed(),
        if report.stopped {
            " (stopped: run again to go on)"
        } else {
            ""
        }
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve {
            config,
            config_flag,
            addr,
            data,
        } => {
            let Loaded {
                config: mut cfg,
                warnings,
            } = load(config.as_ref().or(config_flag.as_ref()))?;
            if let Some(addr) = addr {
                cfg.http.addr = addr;
            }
            if let Some(data) = data {
                cfg.storage.inmemory = None;
                cfg.storage.filesystem = Some(config::Filesystem {
                    rootdirectory: data.to_string_lossy().into_owned(),
                    ..Default::default()
                });
            }
            let _log = init_logging(&cfg);
            for w in &warnings {
                tracing::warn!("{w}");
            }
            server::report_options(&cfg);
            let settings = Settings::from_config(&cfg)?;
            runtime.block_on(server::serve(settings, server::shutdown_signal()))
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let loaded = load(Some(&file))?;
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            Settings::from_config(&loaded.config)?;
            println!("# effective configuration (secrets masked)");
            println!("{}", config::render_effective(&loaded.config));
            println!("# options set");
            for opt in config::option_report(&loaded.config) {
                let status = match opt.status {
                    Status::Active => "active",
                    Status::NotImplemented => "not implemented yet (no effect)",
                    Status::Ignored => "accepted, not needed by Berth (no effect)",
                };
                println!("{:<48} {status}", opt.key);
            }
            println!("configuration is valid");
            Ok(())
        }
        Command::User(c) => runtime.block_on(accounts::user(c)),
        Command::Project(c) => runtime.block_on(accounts::project(c)),
        Command::Robot(c) => runtime.block_on(accounts::robot(c)),
        Command::Token(c) => runtime.block_on(accounts::token(c)),
        Command::Audit {
            user,
            operation,
            resource,
            limit,
            json,
            store,
        } => {
            let query = berth::meta::access::AuditQuery {
                username: user,
                operation,
                resource,
                ..Default::default()
            };
            runtime.block_on(accounts::audit(query, limit, json, store))
        }
        Command::Gc {
            dry_run,
            grace,
            untagged,
            parallelism,
            pace,
            history,
            store,
        } => {
            let _log = logging::init("warn", Format::Text, Default::default());
            let settings = settings_of(&store)?;
            let mut opts = server::gc_options(&settings);
            opts.dry_run = dry_run;
            opts.untagged |= untagged;
            if let Some(g) = grace {
                opts.grace = g.0;
            }
            if let Some(p) = parallelism {
                opts.parallelism = p;
            }
            if let Some(p) = pace {
                opts.pace = p;
            }
            runtime.block_on(collect(settings, opts, history))
        }
        Command::Replication { command } => {
            let _log = logging::init("warn", Format::Text, Default::default());
            runtime.block_on(replication_command(command))
        }
        Command::Import(ImportSource::Distribution { dir, config }) => {
            let _log = logging::init("warn", Format::Text, Default::default());
            let settings = match &config {
                Some(file) => Some(Settings::from_config(&load(Some(file))?.config)?),
                None => None,
            };
            runtime.block_on(async {
                let (store, meta) = match &settings {
                    Some(settings) => (
                        berth::storage::BlobStore::fs(&dir)?,
                        server::open_meta(&settings.meta).await?,
                    ),
                    None => server::open_stores(&dir).await?,
                };
                let report = berth::import::import_distribution(
                    &store,
                    meta.as_ref(),
                    std::io::stderr().is_terminal(),
                )
                .await?;
                println!("{report}");
                Ok(())
            })
        }
    }
}
