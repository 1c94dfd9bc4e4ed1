//! A real OpenLDAP server for tests: `slapd` from Debian's `slapd` package, edited with the
//! `ldapadd`/`ldapmodify` tools of `ldap-utils`.
//!
//! Each `Slapd` lives in its own temporary directory: a `cn=config` built with `slapadd -n0`
//! (mdb database for `dc=example,dc=org`, the core/cosine/inetorgperson/nis schemas and the
//! `memberof` overlay, so `memberOf` on user entries follows group edits), a CA and a server
//! certificate for 127.0.0.1/localhost, and two loopback ports: `ldap://` (StartTLS too) and
//! `ldaps://`. The server is killed when the value is dropped.

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How many port pairs to try when one was taken before slapd bound it.
const PORT_ATTEMPTS: usize = 5;
/// Suffix of the directory's one database.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The root DN, used for edits.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
/// Password of `ADMIN_DN`.
pub const ADMIN_PASSWORD: &str = "admin-secret";
/// A plain account with read access, the one `config()` searches with.
pub const READER_DN: &str = "cn=reader,dc=example,dc=org";
/// Password of `READER_DN`.
pub const READER_PASSWORD: &str = "reader-secret";
/// Where `add_user` puts users.
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
/// Where `add_group` puts groups.
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";

/// A running (or stopped) slapd with its files.
pub struct Slapd {
    dir: tempfile::TempDir,
    ldap_port: u16,
    ldaps_port: u16,
    child: Option<Child>,
}

impl Slapd {
    /// Builds the configuration and the base tree, then starts the server and waits for it.
    pub fn start() -> Slapd {
        let dir = tempfile::Builder::new()
            .prefix("berth-slapd-")
            .tempdir()
            .expect("temporary directory");
        let [ldap_port, ldaps_port] = free_ports();
        let mut slapd = Slapd {
            dir,
            ldap_port,
            ldaps_port,
            child: None,
        };
        slapd.write_certificates();
        slapd.load_config();
        slapd.load_base_tree();
        slapd.start_on_free_ports();
        slapd
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// PEM file of the CA that signed the server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// LdapConfig keys (YAML) for this server over `ldap://`, searching as the reader account.
    pub fn config(&self) -> String {
        format!(
            "url: {url}\n\
             searchdn: {READER_DN}\n\
             searchpassword: {READER_PASSWORD}\n\
             basedn: {SUFFIX}\n\
             filter: (objectClass=inetOrgPerson)\n\
             uid: uid\n\
             scope: 2\n\
             timeout: 5\n\
             groupbasedn: {GROUPS}\n\
             groupfilter: (objectClass=groupOfNames)\n\
             groupattribute: cn\n\
             groupmembershipattribute: memberOf\n\
             groupscope: subtree\n",
            url = self.url()
        )
    }

    /// Adds `uid=UID,ou=people,...` with a password, display name and mail; returns its DN.
    pub fn add_user(&self, uid: &str, password: &str, display: &str, mail: &str) -> String {
        self.add_user_in(PEOPLE, uid, password, display, mail)
    }

    /// Adds a user under `parent` (such as another OU); returns its DN.
    pub fn add_user_in(
        &self,
        parent: &str,
        uid: &str,
        password: &str,
        display: &str,
        mail: &str,
    ) -> String {
        let dn = format!("uid={uid},{parent}");
        self.ldapadd(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
             displayName: {display}\nmail: {mail}\nuserPassword: {password}\n"
        ));
        dn
    }

    /// Adds `ou=NAME,dc=example,dc=org`; returns its DN.
    pub fn add_ou(&self, name: &str) -> String {
        let dn = format!("ou={name},{SUFFIX}");
        self.ldapadd(&format!(
            "dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n"
        ));
        dn
    }

    /// Adds the empty group `cn=CN,ou=groups,...`; returns its DN.
    pub fn add_group(&self, cn: &str) -> String {
        let dn = group_dn(cn);
        // groupOfNames needs a member: an empty value stands in for "nobody".
        self.ldapadd(&format!(
            "dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\nmember:\n"
        ));
        dn
    }

    /// Makes the user `uid` (under ou=people) a member of `group`.
    pub fn add_member(&self, group: &str, uid: &str) {
        self.modify_member(group, uid, "add");
    }

    /// Takes the user `uid` out of `group`.
    pub fn remove_member(&self, group: &str, uid: &str) {
        self.modify_member(group, uid, "delete");
    }

    /// Kills the server; the data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!("slapd did not start again:\n{log}");
        }
    }

    /// Starts on fresh ports until one pair is free when slapd binds it.
    fn start_on_free_ports(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            match self.launch() {
                Ok(()) => return,
                Err(log) if attempt == PORT_ATTEMPTS => panic!("slapd did not start:\n{log}"),
                Err(_) => [self.ldap_port, self.ldaps_port] = free_ports(),
            }
        }
    }

    /// Spawns slapd and waits until both ports answer; the log when it does not.
    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.path("slapd.log")).expect("slapd log");
        let urls = format!("{}/ {}/", self.url(), self.ldaps_url());
        let child = Command::new("slapd")
            .args(["-d", "stats", "-h", &urls, "-F"])
            .arg(self.path("slapd.d"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("slapd log"))
            .stderr(log)
            .spawn()
            .expect("slapd runs (apt-get install slapd ldap-utils)");
        self.child = Some(child);
        let started = self.wait_until_listening();
        if !started {
            self.stop();
            return Err(self.log());
        }
        Ok(())
    }

    fn modify_member(&self, group: &str, uid: &str, change: &str) {
        let ldif = format!(
            "dn: {}\nchangetype: modify\n{change}: member\nmember: uid={uid},{PEOPLE}\n",
            group_dn(group)
        );
        self.ldap_tool("ldapmodify", &ldif);
    }

    fn ldapadd(&self, ldif: &str) {
        self.ldap_tool("ldapadd", ldif);
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        let url = self.url();
        let args = ["-x", "-H", &url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD];
        run_with_input(Command::new(tool).args(args), ldif);
    }

    /// Whether both ports answer (and slapd, not another program, still runs) within 10s.
    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports = [self.ldap_port, self.ldaps_port];
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            if ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return matches!(child.try_wait(), Ok(None));
            }
            sleep(Duration::from_millis(50));
        }
        false
    }

    fn write_certificates(&self) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Berth test LDAP CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        let key = rcgen::KeyPair::generate().expect("server key");
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut params = rcgen::CertificateParams::new(names).expect("server names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        write(&self.path("ca.pem"), &ca.pem());
        write(&self.path("server.pem"), &cert.pem());
        write(&self.path("server.key"), &key.serialize_pem());
    }

    fn load_config(&self) {
        let conf = self.path("slapd.d");
        std::fs::create_dir(&conf).expect("slapd.d");
        std::fs::create_dir(self.path("data")).expect("data directory");
        let ldif = self.path("config.ldif");
        write(&ldif, &self.config_ldif());
        run(Command::new("slapadd")
            .args(["-n0", "-F"])
            .arg(&conf)
            .arg("-l")
            .arg(&ldif));
    }

    fn load_base_tree(&self) {
        let ldif = self.path("base.ldif");
        write(&ldif, &base_tree_ldif());
        run(Command::new("slapadd")
            .args(["-n1", "-F"])
            .arg(self.path("slapd.d"))
            .arg("-l")
            .arg(&ldif));
    }

    fn config_ldif(&self) -> String {
        let p = |name: &str| self.path(name).display().to_string();
        let schemas: String = ["core", "cosine", "inetorgperson", "nis"]
            .iter()
            .map(|s| format!("include: file:///etc/ldap/schema/{s}.ldif\n\n"))
            .collect();
        format!(
            "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\
             olcPidFile: {pid}\n\
             olcTLSCACertificateFile: {ca}\n\
             olcTLSCertificateFile: {cert}\n\
             olcTLSCertificateKeyFile: {key}\n\n\
             dn: cn=module{{0}},cn=config\nobjectClass: olcModuleList\ncn: module{{0}}\n\
             olcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\nolcModuleLoad: memberof\n\n\
             dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n\
             {schemas}\
             dn: olcDatabase={{-1}}frontend,cn=config\nobjectClass: olcDatabaseConfig\n\
             objectClass: olcFrontendConfig\nolcDatabase: {{-1}}frontend\n\n\
             dn: olcDatabase={{0}}config,cn=config\nobjectClass: olcDatabaseConfig\n\
             olcDatabase: {{0}}config\nolcAccess: {{0}}to * by * none\n\n\
             dn: olcDatabase={{1}}mdb,cn=config\nobjectClass: olcDatabaseConfig\n\
             objectClass: olcMdbConfig\nolcDatabase: {{1}}mdb\n\
             olcSuffix: {SUFFIX}\nolcRootDN: {ADMIN_DN}\nolcRootPW: {ADMIN_PASSWORD}\n\
             olcDbDirectory: {data}\nolcDbMaxSize: 67108864\n\
             olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none\n\
             olcAccess: {{1}}to * by * read\n\n\
             dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config\n\
             objectClass: olcOverlayConfig\nobjectClass: olcMemberOf\n\
             olcOverlay: {{0}}memberof\nolcMemberOfRefInt: TRUE\n",
            pid = p("slapd.pid"),
            ca = p("ca.pem"),
            cert = p("server.pem"),
            key = p("server.key"),
            data = p("data"),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("slapd.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// DN of the group `cn` made by `add_group`.
pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS}")
}

fn base_tree_ldif() -> String {
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: reader\nuserPassword: {READER_PASSWORD}\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n"
    )
}

/// Two distinct free loopback ports (both held open while chosen, so they differ).
fn free_ports() -> [u16; 2] {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("free loopback port");
    let listeners = [bind(), bind()];
    listeners.map(|l| l.local_addr().expect("port").port())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn run(command: &mut Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_with_input(command: &mut Command, input: &str) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ldap-utils installed (apt-get install ldap-utils)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write LDIF");
    let output = child.wait_with_output().expect("ldap tool");
    assert!(
        output.status.success(),
        "{command:?} failed on\n{input}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
