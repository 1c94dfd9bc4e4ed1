//! LDAP login against a real slapd started per test (Debian packages `slapd` and `ldap-utils`).

mod common;

use berth::auth::ldap::*;
use common::slapd::{group_dn, Slapd, READER_PASSWORD};

const PASSWORD: &str = "alice-pass";

/// A server with alice (in `devs`) and bob (in no group).
fn server() -> Slapd {
    let slapd = Slapd::start();
    slapd.add_user("alice", PASSWORD, "Alice Liddell", "alice@example.org");
    slapd.add_user("bob", "bob-pass", "Bob Builder", "bob@example.org");
    slapd.add_group("devs");
    slapd.add_member("devs", "alice");
    slapd
}

fn config(slapd: &Slapd, change: impl FnOnce(&mut LdapConfig)) -> LdapConfig {
    let mut config: LdapConfig = serde_yaml::from_str(&slapd.config()).expect("config YAML");
    change(&mut config);
    config
}

fn directory(slapd: &Slapd, change: impl FnOnce(&mut LdapConfig)) -> LdapDirectory {
    LdapDirectory::new(config(slapd, change)).expect("valid LDAP config")
}

fn names(user: &LdapUser) -> Vec<&str> {
    user.groups.iter().map(|g| g.name.as_str()).collect()
}

fn unavailable(result: Result<LdapUser, LdapError>) -> String {
    match result {
        Err(LdapError::Unavailable(message)) => message,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn login_returns_the_user_and_groups() {
    let slapd = server();
    slapd.add_group("ops");
    slapd.add_member("ops", "alice");
    let user = directory(&slapd, |_| {})
        .login("alice", PASSWORD)
        .await
        .expect("login");
    assert_eq!(user.dn, "uid=alice,ou=people,dc=example,dc=org");
    assert_eq!(user.username, "alice");
    assert_eq!(user.display_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(user.email.as_deref(), Some("alice@example.org"));
    assert_eq!(names(&user), ["devs", "ops"]);
    assert_eq!(user.groups[0].dn, group_dn("devs"));
    assert!(!user.admin);

    let upper = directory(&slapd, |_| {}).login("ALICE", PASSWORD).await;
    assert_eq!(upper.expect("case-insensitive uid").username, "alice");

    let bob = directory(&slapd, |_| {}).login("bob", "bob-pass").await;
    assert_eq!(bob.expect("bob logs in").groups, []);
}

#[tokio::test]
async fn groups_come_from_member_of_or_from_the_group_search_alone() {
    let slapd = server();
    let member_of_only = directory(&slapd, |c| c.groupbasedn.clear());
    let user = member_of_only
        .login("alice", PASSWORD)
        .await
        .expect("login");
    assert_eq!(names(&user), ["devs"]);

    let search_only = directory(&slapd, |c| {
        c.groupmembershipattribute = "businessCategory".to_owned();
    });
    let user = search_only.login("alice", PASSWORD).await.expect("login");
    assert_eq!(names(&user), ["devs"]);
}

#[tokio::test]
async fn wrong_password_is_invalid_credentials() {
    let slapd = server();
    let result = directory(&slapd, |_| {}).login("alice", "not-it").await;
    assert!(
        matches!(result, Err(LdapError::InvalidCredentials)),
        "{result:?}"
    );
}

#[tokio::test]
async fn empty_password_is_refused() {
    let slapd = server();
    // Anonymous search, so an unauthenticated bind would be accepted by the server.
    let directory = directory(&slapd, |c| {
        c.searchdn.clear();
        c.searchpassword.clear();
    });
    let result = directory.login("alice", "").await;
    assert!(
        matches!(result, Err(LdapError::InvalidCredentials)),
        "{result:?}"
    );
    let user = directory.login("alice", PASSWORD).await;
    assert_eq!(
        user.expect("anonymous search, then user bind").username,
        "alice"
    );
}

#[tokio::test]
async fn unknown_user_is_invalid_credentials() {
    let slapd = server();
    let result = directory(&slapd, |_| {}).login("mallory", PASSWORD).await;
    assert!(
        matches!(result, Err(LdapError::InvalidCredentials)),
        "{result:?}"
    );
}

#[tokio::test]
async fn filter_metacharacters_in_user_names_match_nobody() {
    let slapd = server();
    let directory = directory(&slapd, |_| {});
    for username in [
        "*",
        "a*",
        "a)(uid=*",
        "alice)(|(uid=*",
        "*)(objectClass=*",
        "alice\\",
    ] {
        let result = directory.login(username, PASSWORD).await;
        assert!(
            matches!(result, Err(LdapError::InvalidCredentials)),
            "{username}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_user_name_with_metacharacters_logs_in_as_itself() {
    let slapd = server();
    let dn = slapd.add_user("pat(x)*", "pat-pass", "Pat", "pat@example.org");
    let user = directory(&slapd, |_| {})
        .login("pat(x)*", "pat-pass")
        .await
        .expect("login");
    assert_eq!(
        (user.dn.as_str(), user.username.as_str()),
        (dn.as_str(), "pat(x)*")
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_unavailable() {
    // Connections are queued by the kernel but nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let config = LdapConfig {
        url: format!("ldap://{}", silent.local_addr().expect("address")),
        basedn: common::slapd::SUFFIX.to_owned(),
        timeout: 1,
        ..LdapConfig::default()
    };
    let directory = LdapDirectory::new(config).expect("valid");
    let started = std::time::Instant::now();
    let message = unavailable(directory.login("alice", PASSWORD).await);
    assert!(message.contains("within 1s"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

#[tokio::test]
async fn leaving_a_group_is_seen_at_the_next_login() {
    let slapd = server();
    let directory = directory(&slapd, |_| {});
    let before = directory.login("alice", PASSWORD).await.expect("login");
    assert_eq!(names(&before), ["devs"]);
    slapd.remove_member("devs", "alice");
    let after = directory.login("alice", PASSWORD).await.expect("login");
    assert_eq!(after.groups, []);
}

#[tokio::test]
async fn members_of_groupadmindn_are_admins() {
    let slapd = server();
    slapd.add_group("admins");
    slapd.add_member("admins", "alice");
    let directory = directory(&slapd, |c| {
        c.groupadmindn = "CN=Admins, OU=Groups, DC=Example, DC=org".to_owned();
    });
    let alice = directory.login("alice", PASSWORD).await.expect("alice");
    assert!(alice.admin);
    let bob = directory.login("bob", "bob-pass").await.expect("bob");
    assert!(!bob.admin);
}

#[tokio::test]
async fn an_admin_group_outside_the_group_search_still_counts() {
    let slapd = server();
    let admins = slapd.add_group("admins");
    slapd.add_member("admins", "alice");
    let directory = directory(&slapd, |c| {
        c.groupbasedn = common::slapd::PEOPLE.to_owned();
        c.groupmembershipattribute = "businessCategory".to_owned();
        c.groupadmindn = admins.clone();
    });
    let alice = directory.login("alice", PASSWORD).await.expect("alice");
    assert!(alice.admin);
    assert_eq!(names(&alice), ["admins"]);
    assert!(!directory.login("bob", "bob-pass").await.expect("bob").admin);

    let missing = directory_with_admin(&slapd, "cn=nobody,dc=example,dc=org");
    assert!(!missing.login("alice", PASSWORD).await.expect("alice").admin);
}

fn directory_with_admin(slapd: &Slapd, admin_dn: &str) -> LdapDirectory {
    directory(slapd, |c| {
        c.groupbasedn.clear();
        c.groupadmindn = admin_dn.to_owned();
    })
}

#[tokio::test]
async fn ldaps_verifies_against_the_given_ca() {
    let slapd = server();
    let directory = directory(&slapd, |c| {
        c.url = slapd.ldaps_url();
        c.ca = Some(slapd.ca_path());
    });
    let user = directory.login("alice", PASSWORD).await.expect("login");
    assert_eq!(names(&user), ["devs"]);
    directory.ping().await.expect("ping");
}

#[tokio::test]
async fn ldaps_with_an_untrusted_certificate_is_unavailable() {
    let slapd = server();
    let directory = directory(&slapd, |c| c.url = slapd.ldaps_url());
    let message = unavailable(directory.login("alice", PASSWORD).await);
    assert!(message.contains("TLS"), "{message}");
    assert!(message.contains("`ca`"), "{message}");
}

#[tokio::test]
async fn verifycert_false_accepts_any_certificate() {
    let slapd = server();
    let directory = directory(&slapd, |c| {
        c.url = slapd.ldaps_url();
        c.verifycert = false;
    });
    directory.login("alice", PASSWORD).await.expect("login");
}

#[tokio::test]
async fn starttls_upgrades_the_plain_port() {
    let slapd = server();
    let verified = directory(&slapd, |c| {
        c.starttls = true;
        c.ca = Some(slapd.ca_path());
    });
    verified.login("alice", PASSWORD).await.expect("login");

    let untrusted = directory(&slapd, |c| c.starttls = true);
    let message = unavailable(untrusted.login("alice", PASSWORD).await);
    assert!(message.contains("TLS"), "{message}");
}

#[tokio::test]
async fn a_wrong_search_password_is_unavailable_and_says_so() {
    let slapd = server();
    let wrong = format!("{READER_PASSWORD}-typo");
    let directory = directory(&slapd, |c| c.searchpassword = wrong.clone());
    let message = unavailable(directory.login("alice", PASSWORD).await);
    assert!(message.contains("searchpassword"), "{message}");
    assert!(
        !message.contains(&wrong) && !message.contains(PASSWORD),
        "{message}"
    );
    assert!(matches!(
        directory.ping().await,
        Err(LdapError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_stopped_server_is_unavailable() {
    let mut slapd = server();
    let directory = directory(&slapd, |c| c.timeout = 2);
    directory.ping().await.expect("ping");
    slapd.stop();
    let message = unavailable(directory.login("alice", PASSWORD).await);
    assert!(message.contains(&slapd.url()), "{message}");
    assert!(matches!(
        directory.ping().await,
        Err(LdapError::Unavailable(_))
    ));
    slapd.restart();
    directory
        .login("alice", PASSWORD)
        .await
        .expect("login after restart");
}

#[tokio::test]
async fn one_name_in_two_entries_is_ambiguous() {
    let slapd = server();
    let contractors = slapd.add_ou("contractors");
    slapd.add_user_in(
        &contractors,
        "alice",
        "other",
        "Other Alice",
        "a2@example.org",
    );
    let result = directory(&slapd, |_| {}).login("alice", PASSWORD).await;
    assert!(matches!(result, Err(LdapError::Ambiguous(_))), "{result:?}");

    let narrowed = directory(&slapd, |c| c.basedn = common::slapd::PEOPLE.to_owned());
    narrowed
        .login("alice", PASSWORD)
        .await
        .expect("login under ou=people");
}

#[tokio::test]
async fn the_yaml_fragment_reads_as_a_valid_config() {
    let slapd = Slapd::start();
    let config = config(&slapd, |_| {});
    assert_eq!(config.scope, LdapScope::Subtree);
    assert_eq!(config.groupmembershipattribute, "memberOf");
    LdapDirectory::new(config).expect("valid");
}
