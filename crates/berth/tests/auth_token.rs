//! Token authentication, end to end without the registry server: tokens issued by
//! `common::token` (RS256/ES256, self-signed certificate bundle, `x5c`, `kid`, JWKS) verified by
//! `berth::auth`, and the test token service spoken to over HTTP.

mod common;

use berth::auth::{AuthError, Method, Scope, TokenVerifier};
use berth::config::{Auth, TokenAuth};
use common::token::{self, KeyHint, Signer, TokenService};
use serde_json::json;

const ISSUER: &str = "test-issuer";
const SERVICE: &str = "berth-test";
const REALM: &str = "https://auth.example.com/token";

struct Setup {
    _dir: tempfile::TempDir,
    verifier: TokenVerifier,
}

fn token_config(bundle: Option<&std::path::Path>, jwks: Option<&std::path::Path>) -> TokenAuth {
    TokenAuth {
        realm: Some(REALM.into()),
        service: Some(SERVICE.into()),
        issuer: Some(ISSUER.into()),
        rootcertbundle: bundle.map(|p| p.to_string_lossy().into_owned()),
        jwks: jwks.map(|p| p.to_string_lossy().into_owned()),
        ..TokenAuth::default()
    }
}

fn setup(bundle: &[&Signer]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = token::write_bundle(dir.path(), bundle);
    let verifier = TokenVerifier::from_config(&token_config(Some(&path), None)).unwrap();
    Setup {
        _dir: dir,
        verifier,
    }
}

fn good_claims(access: &[&str]) -> serde_json::Value {
    token::claims(ISSUER, "alice", SERVICE, access)
}

#[test]
fn rs256_and_es256_verify() {
    let rsa = Signer::rsa("rsa signer");
    let ec = Signer::ec("ec signer");
    let s = setup(&[&rsa, &ec]);
    for signer in [&rsa, &ec] {
        for hint in [
            KeyHint::None,
            KeyHint::X5c(vec![signer.cert_der.clone()]),
            KeyHint::Kid(signer.libtrust_kid()),
            KeyHint::Kid(signer.thumbprint_kid()),
            KeyHint::Kid("unknown-kid".into()),
        ] {
            let t = signer.sign(&good_claims(&["repository:foo/bar:pull,push"]), &hint);
            let id = s
                .verifier
                .verify(&t)
                .unwrap_or_else(|e| panic!("{:?} {hint:?}: {e}", signer.alg));
            assert_eq!(id.subject, "alice");
            assert_eq!(
                id.access,
                vec![Scope::repository("foo/bar", &["pull", "push"])]
            );
            assert!(id.allows(&Scope::repository("foo/bar", &["push"])));
        }
    }
}

#[test]
fn kid_selects_the_key() {
    // A known kid restricts verification to that key: signing with one bundle key while
    // naming the other must fail (an unknown kid would fall back to every key and succeed).
    let a = Signer::ec("a");
    let b = Signer::ec("b");
    let rsa = Signer::rsa("rsa");
    let s = setup(&[&a, &b, &rsa]);
    let c = good_claims(&[]);
    for kid in [b.libtrust_kid(), b.thumbprint_kid()] {
        assert_eq!(
            s.verifier.verify(&a.sign(&c, &KeyHint::Kid(kid))),
            Err(AuthError::BadSignature)
        );
    }
    for kid in [rsa.libtrust_kid(), rsa.thumbprint_kid()] {
        assert!(s.verifier.verify(&rsa.sign(&c, &KeyHint::Kid(kid))).is_ok());
    }
    // RSA-signed token naming an EC key: no key of the right type.
    assert!(matches!(
        s.verifier
            .verify(&rsa.sign(&c, &KeyHint::Kid(a.libtrust_kid()))),
        Err(AuthError::UntrustedKey(_))
    ));
}

#[test]
fn audience_list_and_missing_access() {
    let ec = Signer::ec("ec");
    let s = setup(&[&ec]);
    let mut c = good_claims(&[]);
    c["aud"] = json!(["other", SERVICE]);
    c.as_object_mut().unwrap().remove("access");
    c.as_object_mut().unwrap().remove("nbf");
    let id = s.verifier.verify(&ec.sign_x5c(&c)).unwrap();
    assert!(id.access.is_empty());
    assert!(!id.allows(&Scope::repository("foo", &["pull"])));
    assert!(id.allows(&Scope::repository("foo", &[])));
}

#[test]
fn claim_checks() {
    let ec = Signer::ec("ec");
    let s = setup(&[&ec]);
    let now = token::now();
    let cases: Vec<(&str, serde_json::Value, AuthError)> = vec![
        ("iss", json!("someone-else"), AuthError::WrongIssuer),
        ("aud", json!("other-service"), AuthError::WrongAudience),
        ("aud", json!(["a", "b"]), AuthError::WrongAudience),
        ("exp", json!(now - 120), AuthError::Expired),
        ("nbf", json!(now + 120), AuthError::NotYetValid),
    ];
    for (claim, value, want) in cases {
        let mut c = good_claims(&["repository:foo:pull"]);
        c[claim] = value;
        let got = s.verifier.verify(&ec.sign_x5c(&c)).unwrap_err();
        assert_eq!(got, want, "{claim}");
        assert_eq!(got.challenge_error(), Some("invalid_token"));
    }
    // Within the 60 s leeway.
    let mut c = good_claims(&[]);
    c["exp"] = json!(now - 30);
    c["nbf"] = json!(now + 30);
    assert!(s.verifier.verify(&ec.sign_x5c(&c)).is_ok());
    // Missing exp.
    let mut c = good_claims(&[]);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        s.verifier.verify(&ec.sign_x5c(&c)).unwrap_err(),
        AuthError::Expired
    );
}

#[test]
fn untrusted_and_tampered() {
    let trusted = Signer::ec("trusted");
    let rogue = Signer::ec("rogue");
    let rogue_rsa = Signer::rsa("rogue rsa"); // same RSA key as nothing in the bundle
    let s = setup(&[&trusted]);
    let c = good_claims(&["repository:foo:pull"]);

    // Signed by a key not in the bundle: with its own certificate in x5c, with no hint.
    assert!(matches!(
        s.verifier.verify(&rogue.sign_x5c(&c)),
        Err(AuthError::UntrustedKey(_))
    ));
    assert_eq!(
        s.verifier.verify(&rogue.sign(&c, &KeyHint::None)),
        Err(AuthError::BadSignature)
    );
    assert!(matches!(
        s.verifier.verify(&rogue_rsa.sign(&c, &KeyHint::None)),
        Err(AuthError::UntrustedKey(_))
    ));
    // Rogue key claiming the trusted certificate in x5c / the trusted kid.
    let lying = rogue.sign(&c, &KeyHint::X5c(vec![trusted.cert_der.clone()]));
    assert_eq!(s.verifier.verify(&lying), Err(AuthError::BadSignature));
    let lying = rogue.sign(&c, &KeyHint::Kid(trusted.libtrust_kid()));
    assert_eq!(s.verifier.verify(&lying), Err(AuthError::BadSignature));

    // Tampered payload: grant push instead of pull, keep the signature.
    let t = trusted.sign_x5c(&c);
    let parts: Vec<&str> = t.split('.').collect();
    let mut c2 = c.clone();
    c2["access"] = token::access_claim(&["repository:foo:pull,push"]);
    let forged_payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c2.to_string())
    };
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(s.verifier.verify(&forged), Err(AuthError::BadSignature));
    // Tampered signature.
    let mut sig = parts[2].to_string();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, flipped);
    let forged = format!("{}.{}.{}", parts[0], parts[1], sig);
    assert_eq!(s.verifier.verify(&forged), Err(AuthError::BadSignature));

    // Garbage.
    for g in [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJFUzI1NiJ9.e30",
    ] {
        assert_eq!(s.verifier.verify(g), Err(AuthError::Malformed), "{g:?}");
    }
    // alg none is not accepted.
    let none = {
        use base64::Engine as _;
        let e = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.", e(&json!({"alg": "none", "typ": "JWT"})), e(&c))
    };
    assert!(s.verifier.verify(&none).is_err());
}

#[test]
fn x5c_chain_through_intermediate() {
    let root = Signer::ec_ca("root ca");
    let intermediate = Signer::ec_issued_by("intermediate ca", &root, true);
    let leaf = Signer::ec_issued_by("token signer", &intermediate, false);
    let s = setup(&[&root]);
    let c = good_claims(&["repository:foo:pull"]);
    let chain = vec![leaf.cert_der.clone(), intermediate.cert_der.clone()];
    let id = s
        .verifier
        .verify(&leaf.sign(&c, &KeyHint::X5c(chain)))
        .unwrap();
    assert_eq!(id.subject, "alice");
    // Missing intermediate: not rooted.
    assert!(matches!(
        s.verifier
            .verify(&leaf.sign(&c, &KeyHint::X5c(vec![leaf.cert_der.clone()]))),
        Err(AuthError::UntrustedKey(_))
    ));
    // A leaf (not a CA) cannot act as an intermediate.
    let fake_leaf = Signer::ec_issued_by("fake", &leaf, false);
    let chain = vec![fake_leaf.cert_der.clone(), leaf.cert_der.clone()];
    assert!(matches!(
        s.verifier.verify(&fake_leaf.sign(&c, &KeyHint::X5c(chain))),
        Err(AuthError::UntrustedKey(_))
    ));
    // Issued directly by a bundle root.
    let direct = Signer::ec_issued_by("direct", &root, false);
    assert!(s.verifier.verify(&direct.sign_x5c(&c)).is_ok());
}

#[test]
fn jwks_keys() {
    let ec = Signer::ec("jwks ec");
    let rsa = Signer::rsa("jwks rsa");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let mut doc = ec.jwks("ec-key");
    let rsa_doc = rsa.jwks("rsa-key");
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(rsa_doc["keys"][0].clone());
    std::fs::write(&path, doc.to_string()).unwrap();
    let v = TokenVerifier::from_config(&token_config(None, Some(&path))).unwrap();
    let c = good_claims(&["repository:foo:pull"]);
    assert!(v
        .verify(&ec.sign(&c, &KeyHint::Kid("ec-key".into())))
        .is_ok());
    assert!(v
        .verify(&rsa.sign(&c, &KeyHint::Kid("rsa-key".into())))
        .is_ok());
    assert!(v.verify(&rsa.sign(&c, &KeyHint::None)).is_ok());
    let rogue = Signer::ec("rogue");
    assert_eq!(
        v.verify(&rogue.sign(&c, &KeyHint::Kid("ec-key".into()))),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn signing_algorithms_restrict() {
    let rsa = Signer::rsa("rsa");
    let ec = Signer::ec("ec");
    let dir = tempfile::tempdir().unwrap();
    let path = token::write_bundle(dir.path(), &[&rsa, &ec]);
    let mut cfg = token_config(Some(&path), None);
    cfg.signingalgorithms = vec!["ES256".into()];
    let v = TokenVerifier::from_config(&cfg).unwrap();
    let c = good_claims(&[]);
    assert!(v.verify(&ec.sign_x5c(&c)).is_ok());
    assert!(matches!(
        v.verify(&rsa.sign_x5c(&c)),
        Err(AuthError::UntrustedKey(_))
    ));
    cfg.signingalgorithms = vec!["XX999".into()];
    assert!(matches!(
        TokenVerifier::from_config(&cfg),
        Err(AuthError::Config(_))
    ));
}

#[test]
fn challenge_format() {
    let ec = Signer::ec("ec");
    let s = setup(&[&ec]);
    assert_eq!(
        s.verifier.challenge(&[], None),
        r#"Bearer realm="https://auth.example.com/token",service="berth-test""#
    );
    assert_eq!(
        s.verifier.challenge(
            &[Scope::repository("samalba/my-app", &["pull", "push"])],
            None
        ),
        r#"Bearer realm="https://auth.example.com/token",service="berth-test",scope="repository:samalba/my-app:pull,push""#
    );
    assert_eq!(
        s.verifier.challenge(
            &[
                Scope::repository("foo", &["pull"]),
                Scope::repository("bar", &["pull", "push"]),
                Scope::repository("foo", &["push"]),
            ],
            Some("insufficient_scope")
        ),
        r#"Bearer realm="https://auth.example.com/token",service="berth-test",scope="repository:foo:pull,push repository:bar:pull,push",error="insufficient_scope""#
    );
    assert_eq!(
        s.verifier
            .challenge(&[Scope::catalog()], Some("invalid_token")),
        r#"Bearer realm="https://auth.example.com/token",service="berth-test",scope="registry:catalog:*",error="invalid_token""#
    );
}

#[test]
fn authenticator_flow() {
    let ec = Signer::ec("ec");
    let dir = tempfile::tempdir().unwrap();
    let path = token::write_bundle(dir.path(), &[&ec]);
    let auth = Method::from_config(&Auth {
        token: Some(token_config(Some(&path), None)),
        ..Auth::default()
    })
    .unwrap()
    .unwrap();
    let pull = [Scope::repository("foo", &["pull"])];
    let push = [Scope::repository("foo", &["pull", "push"])];
    let base = r#"Bearer realm="https://auth.example.com/token",service="berth-test""#;

    // Missing credentials, and Basic instead of Bearer: no error parameter.
    for header in [None, Some("Basic YWxpY2U6cHc="), Some("Bearer "), Some("")] {
        let ch = auth.authenticate(header, &pull).unwrap_err();
        assert_eq!(ch.status, 401);
        assert_eq!(ch.error, AuthError::MissingCredentials);
        assert_eq!(
            ch.www_authenticate.as_deref(),
            Some(format!(r#"{base},scope="repository:foo:pull""#).as_str())
        );
    }
    // Invalid token.
    let ch = auth
        .authenticate(Some("Bearer garbage"), &pull)
        .unwrap_err();
    assert_eq!(ch.status, 401);
    assert_eq!(ch.error, AuthError::Malformed);
    assert_eq!(
        ch.www_authenticate.as_deref(),
        Some(format!(r#"{base},scope="repository:foo:pull",error="invalid_token""#).as_str())
    );
    // Good token, enough and not enough access; scheme is case-insensitive.
    let t = ec.sign_x5c(&good_claims(&["repository:foo:pull"]));
    let id = auth
        .authenticate(Some(&format!("bearer {t}")), &pull)
        .unwrap();
    assert_eq!(id.subject, "alice");
    let ch = auth
        .authenticate(Some(&format!("Bearer {t}")), &push)
        .unwrap_err();
    assert_eq!(ch.status, 401);
    assert_eq!(ch.error, AuthError::InsufficientScope);
    assert_eq!(
        ch.www_authenticate.as_deref(),
        Some(
            format!(r#"{base},scope="repository:foo:pull,push",error="insufficient_scope""#)
                .as_str()
        )
    );
    assert_eq!(
        ch.detail(),
        json!([
            {"Type": "repository", "Class": "", "Name": "foo", "Action": "pull"},
            {"Type": "repository", "Class": "", "Name": "foo", "Action": "push"}
        ])
    );
    // Other repository, catalog, and the base endpoint (nothing needed).
    let other = [Scope::repository("other", &["pull"])];
    assert!(auth
        .authenticate(Some(&format!("Bearer {t}")), &other)
        .is_err());
    assert!(auth
        .authenticate(Some(&format!("Bearer {t}")), &[Scope::catalog()])
        .is_err());
    assert!(auth.authenticate(Some(&format!("Bearer {t}")), &[]).is_ok());
    let star = ec.sign_x5c(&good_claims(&["repository:foo:*", "registry:catalog:*"]));
    let h = format!("Bearer {star}");
    assert!(auth
        .authenticate(
            Some(&h),
            &[Scope::repository("foo", &["pull", "push", "delete"])]
        )
        .is_ok());
    assert!(auth.authenticate(Some(&h), &[Scope::catalog()]).is_ok());
}

#[test]
fn autoredirect_realm() {
    let ec = Signer::ec("ec");
    let dir = tempfile::tempdir().unwrap();
    let path = token::write_bundle(dir.path(), &[&ec]);
    let mut cfg = token_config(Some(&path), None);
    cfg.realm = None;
    cfg.autoredirect = true;
    let auth = Method::from_config(&Auth {
        token: Some(cfg),
        ..Auth::default()
    })
    .unwrap()
    .unwrap();
    let ch = auth
        .authenticate_request(None, &[], Some("registry.example:5000"), None)
        .unwrap_err();
    assert_eq!(
        ch.www_authenticate.as_deref(),
        Some(r#"Bearer realm="https://registry.example:5000/auth/token",service="berth-test""#)
    );
    let ch = auth
        .authenticate_request(None, &[], Some("localhost"), Some("http"))
        .unwrap_err();
    assert!(ch
        .www_authenticate
        .unwrap()
        .starts_with(r#"Bearer realm="http://localhost/auth/token""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_service_over_http() {
    let signer = Signer::rsa("token service");
    let dir = tempfile::tempdir().unwrap();
    let path = token::write_bundle(dir.path(), &[&signer]);
    let service = TokenService::start_default(signer, ISSUER);
    let verifier = TokenVerifier::from_config(&token_config(Some(&path), None)).unwrap();
    let client = reqwest::Client::new();
    let url = service.realm();

    let get = |user: Option<(&str, &str)>, scopes: &[&str]| {
        let mut q: Vec<(&str, &str)> = vec![("service", SERVICE)];
        q.extend(scopes.iter().map(|s| ("scope", *s)));
        let mut rb = client.get(&url).query(&q);
        if let Some((u, p)) = user {
            rb = rb.basic_auth(u, Some(p));
        }
        rb.send()
    };

    // alice: push on alice/*, pull elsewhere; asking for more is silently narrowed.
    let resp = get(
        Some(("alice", "alice-pass")),
        &[
            "repository:alice/app:pull,push",
            "repository:bob/app:pull,push",
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["token"], body["access_token"]);
    let issued = body["issued_at"].as_str().unwrap();
    assert_eq!(issued.len(), 20, "{issued}");
    assert!(issued.ends_with('Z'));
    let id = verifier.verify(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(id.subject, "alice");
    assert!(id.allows(&Scope::repository("alice/app", &["pull", "push"])));
    assert!(id.allows(&Scope::repository("bob/app", &["pull"])));
    assert!(!id.allows(&Scope::repository("bob/app", &["push"])));

    // Wrong password and unknown user: 401.
    for creds in [("alice", "nope"), ("mallory", "x")] {
        let resp = get(Some(creds), &["repository:alice/app:pull"])
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }

    // Anonymous: pull on public/* only.
    let body: serde_json::Value = get(None, &["repository:public/x:pull,push repository:y:pull"])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = verifier.verify(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(id.access, vec![Scope::repository("public/x", &["pull"])]);

    // admin: catalog.
    let body: serde_json::Value = get(Some(("admin", "admin-pass")), &["registry:catalog:*"])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = verifier.verify(body["token"].as_str().unwrap()).unwrap();
    assert!(id.allows(&Scope::catalog()));

    // Missing service.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn rfc3339_format() {
    assert_eq!(token::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(token::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(token::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}
