//! Unit tests for the authenticator: config, WebSocket query auth, JWT verification, minting, REST keys.

use super::keys::{AppConfig, PublishableKeyConfig, SecretKeyConfig};
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;
const KID: &str = "sk_id_main";
const SECRET: &str = "sk_secret_main0123456789abcdef0123456789";
const KID_NARROW: &str = "sk_id_narrow";
const SECRET_NARROW: &str = "sk_secret_narrow0123456789abcdef0123456789";
const KID_OTHER: &str = "sk_id_other";
const SECRET_OTHER: &str = "sk_secret_other0123456789abcdef0123456789";

fn config() -> Vec<AppConfig> {
    vec![
        AppConfig {
            id: "main".into(),
            max_connections: Some(10),
            secret_keys: vec![
                SecretKeyConfig {
                    id: KID.into(),
                    secret: SECRET.into(),
                    channel_patterns: vec!["**".into()],
                    actions: vec![
                        "publish".into(),
                        "subscribe".into(),
                        "presence".into(),
                        "send".into(),
                        "admin".into(),
                    ],
                },
                SecretKeyConfig {
                    id: KID_NARROW.into(),
                    secret: SECRET_NARROW.into(),
                    channel_patterns: vec!["rooms/*".into(), "org/**".into()],
                    actions: vec!["subscribe".into(), "presence".into()],
                },
            ],
            publishable_keys: vec![
                PublishableKeyConfig {
                    key: "pk_live_open".into(),
                    channel_patterns: vec!["public/*".into()],
                    actions: vec!["publish".into(), "subscribe".into(), "presence".into()],
                    allowed_origins: vec![],
                },
                PublishableKeyConfig {
                    key: "pk_live_site".into(),
                    channel_patterns: vec!["site/**".into()],
                    actions: vec!["subscribe".into()],
                    allowed_origins: vec!["https://example.com".into()],
                },
                PublishableKeyConfig {
                    key: "pk_live_star".into(),
                    channel_patterns: vec!["**".into()],
                    actions: vec!["subscribe".into()],
                    allowed_origins: vec!["https://a.example".into(), "*".into()],
                },
            ],
            history: vec![],
        },
        AppConfig {
            id: "other".into(),
            max_connections: None,
            secret_keys: vec![SecretKeyConfig {
                id: KID_OTHER.into(),
                secret: SECRET_OTHER.into(),
                channel_patterns: vec!["**".into()],
                actions: vec!["publish".into()],
            }],
            publishable_keys: vec![],
            history: vec![],
        },
    ]
}

fn auth() -> Authenticator {
    Authenticator::new(&config()).expect("valid config")
}

/// Signs `claims` with jsonwebtoken, like a third-party issuer would.
fn sign(alg: Algorithm, kid: Option<&str>, secret: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encodes")
}

fn token(claims: Value) -> String {
    sign(Algorithm::HS256, Some(KID), SECRET, &claims)
}

fn ws(a: &Authenticator, jwt: &str) -> Result<Identity, AuthError> {
    a.authenticate_ws(&format!("token={jwt}"), None, NOW)
}

fn invalid(r: Result<Identity, AuthError>) -> &'static str {
    match r {
        Err(AuthError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authenticator>();
    assert_send_sync::<Identity>();
}

#[test]
fn actions() {
    let a = Actions::parse_list(&["publish", "send", "publish"]).expect("valid");
    assert!(a.contains(Actions::PUBLISH | Actions::SEND));
    assert!(!a.contains(Actions::SUBSCRIBE));
    assert_eq!(a & Actions::SEND, Actions::SEND);
    assert_eq!(a.intersection(Actions::PRESENCE), Actions::NONE);
    assert!(Actions::NONE.is_empty());
    assert_eq!(Actions::default(), Actions::NONE);
    assert_eq!(
        Actions::ALL.names(),
        ["publish", "subscribe", "presence", "send", "admin"]
    );
    assert_eq!(
        Actions::CONNECTION.names(),
        ["publish", "subscribe", "presence", "send"]
    );
    assert_eq!(Actions::ALL & Actions::CONNECTION, Actions::CONNECTION);
    assert!(!Actions::CONNECTION.contains(Actions::ADMIN));
    assert_eq!(a.to_string(), "publish,send");
    assert_eq!(Actions::parse_list::<&str>(&[]), Ok(Actions::NONE));
    assert!(Actions::parse_list(&["Publish"]).is_err());
    assert_eq!(Actions::parse_list(&["admin"]), Ok(Actions::ADMIN));
    assert!(Actions::parse_list(&["Admin"])
        .unwrap_err()
        .contains("Admin"));
    assert_eq!(Actions::from_bits_truncate(0xFF), Actions::ALL);
    assert_eq!(Actions::SEND.bits(), 8);
}

#[test]
fn error_codes() {
    assert_eq!(AuthError::Invalid("x").close_code(), 4001);
    assert_eq!(AuthError::Invalid("x").reason(), "x");
    assert_eq!(AuthError::Expired.close_code(), 4002);
    assert_eq!(AuthError::ChannelsNotAuthorized.close_code(), 4003);
    assert!(AuthError::ChannelsNotAuthorized.reason().len() < 123);
}

#[test]
fn app_accessors() {
    let a = auth();
    assert_eq!(a.app_count(), 2);
    assert_eq!(a.app_name(AppId(0)), "main");
    assert_eq!(a.app_name(AppId(1)), "other");
    assert_eq!(a.app_name(AppId(9)), "");
    assert_eq!(a.app_id("other"), Some(AppId(1)));
    assert_eq!(a.app_id("nope"), None);
    assert_eq!(a.app_max_connections(AppId(0)), Some(10));
    assert_eq!(a.app_max_connections(AppId(1)), None);
    assert_eq!(
        a.secret_key_ids(AppId(0)).collect::<Vec<_>>(),
        [KID, KID_NARROW]
    );
    assert!(!format!("{a:?}").contains(SECRET));
}

#[test]
fn valid_token_full_claims() {
    let a = auth();
    let jwt = token(json!({
        "sub": "alice", "exp": NOW + 60, "nbf": NOW, "iat": NOW,
        "channels": ["rooms/*", "dm/alice"],
        "permissions": ["subscribe", "publish"],
        "metadata": {"plan": "pro", "tags": ["a", "b"]},
        "peerMetadata": {"name": "Alice"},
        "aud": "whatever", "iss": "me", "custom": 1
    }));
    let id = ws(&a, &jwt).expect("valid token");
    assert_eq!(id.app, AppId(0));
    assert_eq!(&*id.peer_id, "alice");
    assert_eq!(id.actions, Actions::SUBSCRIBE | Actions::PUBLISH);
    assert_eq!(id.expires_at, Some(NOW + 60));
    let meta: Value =
        serde_json::from_str(id.metadata_json.as_deref().expect("metadata")).expect("json");
    assert_eq!(meta, json!({"plan": "pro", "tags": ["a", "b"]}));
    assert!(
        !id.metadata_json
            .as_deref()
            .unwrap_or_default()
            .contains(' '),
        "compact"
    );
    assert_eq!(
        id.peer_metadata_json.as_deref(),
        Some(&br#"{"name":"Alice"}"#[..])
    );
    assert!(id.scope.allows("rooms/1"));
    assert!(id.scope.allows("dm/alice"));
    assert!(!id.scope.allows("dm/bob"));
    assert!(!id.scope.allows("rooms/1/x"));
    assert_eq!(id.scope.token_patterns().map(<[_]>::len), Some(2));
}

#[test]
fn minimal_token_defaults() {
    let a = auth();
    let id = ws(&a, &token(json!({"sub": "bob", "exp": NOW + 1}))).expect("valid");
    // The key has all five actions; a connection never holds `admin`.
    assert_eq!(id.actions, Actions::CONNECTION);
    assert!(id.scope.allows("any/thing/at/all"));
    assert!(id.scope.token_patterns().is_none());
    assert!(id.metadata_json.is_none() && id.peer_metadata_json.is_none());
    // Explicit nulls are treated as absent.
    let id = ws(
        &a,
        &token(json!({"sub": "bob", "exp": NOW + 1, "channels": null, "permissions": null, "metadata": null})),
    )
    .expect("valid");
    assert_eq!(id.actions, Actions::CONNECTION);
    // Fractional exp is truncated.
    let id = ws(
        &a,
        &token(json!({"sub": "bob", "exp": (NOW + 5) as f64 + 0.5})),
    )
    .expect("valid");
    assert_eq!(id.expires_at, Some(NOW + 5));
}

#[test]
fn pyjwt_vector() {
    // Produced like PyJWT: jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id}).
    let a = Authenticator::new(&[AppConfig {
        id: "py".into(),
        max_connections: None,
        secret_keys: vec![SecretKeyConfig {
            id: "sk_id_pyjwt".into(),
            secret: "sk_secret_pyjwtpyjwtpyjwtpyjwtpyjwt".into(),
            channel_patterns: vec!["rooms/**".into()],
            actions: vec![
                "publish".into(),
                "subscribe".into(),
                "presence".into(),
                "send".into(),
            ],
        }],
        publishable_keys: vec![],
        history: vec![],
    }])
    .expect("valid");
    let jwt = "eyJhbGciOiJIUzI1NiIsImtpZCI6InNrX2lkX3B5and0IiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwibmJmIjoxMDAwLCJjaGFubmVscyI6WyJyb29tcy8qIl0sInBlcm1pc3Npb25zIjpbInN1YnNjcmliZSIsInByZXNlbmNlIl0sIm1ldGFkYXRhIjp7InBsYW4iOiJwcm8iLCJuIjpbMSwyXX0sInBlZXJNZXRhZGF0YSI6eyJuYW1lIjoiQWxpY2UifX0.9QvSI1R5TlzTRX8-gp5gypPtk2E-ofbuPiqfG0XJt9U";
    let id = ws(&a, jwt).expect("PyJWT token accepted");
    assert_eq!(&*id.peer_id, "alice");
    assert_eq!(id.actions, Actions::SUBSCRIBE | Actions::PRESENCE);
    assert_eq!(id.expires_at, Some(2_000_000_000));
    assert!(id.scope.allows("rooms/x") && !id.scope.allows("rooms/x/y"));
    assert_eq!(
        id.peer_metadata_json.as_deref(),
        Some(&br#"{"name":"Alice"}"#[..])
    );
}

#[test]
fn refused_algorithms() {
    let a = auth();
    let claims = json!({"sub": "alice", "exp": NOW + 60});
    // HS384 and HS512 with the right secret.
    assert_eq!(
        invalid(ws(&a, &sign(Algorithm::HS384, Some(KID), SECRET, &claims))),
        "unsupported alg"
    );
    assert_eq!(
        invalid(ws(&a, &sign(Algorithm::HS512, Some(KID), SECRET, &claims))),
        "unsupported alg"
    );
    // Hand-crafted alg "none" (empty signature, and with a bogus signature).
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": KID});
    let none = format!("{}.{}.", b64(&none_header), b64(&claims));
    invalid(ws(&a, &none));
    invalid(ws(&a, &format!("{none}AAAA")));
    let none_upper = json!({"alg": "None", "kid": KID});
    invalid(ws(&a, &format!("{}.{}.", b64(&none_upper), b64(&claims))));
    // RS256 header carrying an HMAC signature (algorithm confusion).
    let rs_header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
    let forged = format!("{}.{}.sig", b64(&rs_header), b64(&claims));
    assert_eq!(invalid(ws(&a, &forged)), "unsupported alg");
}

#[test]
fn bad_signatures_and_keys() {
    let a = auth();
    let claims = json!({"sub": "alice", "exp": NOW + 60});
    assert_eq!(
        invalid(ws(
            &a,
            &sign(Algorithm::HS256, Some(KID), "sk_secret_wrong", &claims)
        )),
        "bad signature"
    );
    // Signed with another key's secret but claiming KID.
    assert_eq!(
        invalid(ws(
            &a,
            &sign(Algorithm::HS256, Some(KID), SECRET_OTHER, &claims)
        )),
        "bad signature"
    );
    assert_eq!(
        invalid(ws(&a, &sign(Algorithm::HS256, None, SECRET, &claims))),
        "missing kid"
    );
    assert_eq!(
        invalid(ws(
            &a,
            &sign(Algorithm::HS256, Some("sk_id_nope"), SECRET, &claims)
        )),
        "unknown kid"
    );
    // Tampered payload.
    let good = token(claims);
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(json!({"sub": "mallory", "exp": NOW + 60}).to_string());
    parts[1] = &evil;
    assert_eq!(invalid(ws(&a, &parts.join("."))), "bad signature");
    // Garbage.
    for junk in ["x", "a.b", "a.b.c", "....", "eyJ.eyJ.eyJ", "\u{0}"] {
        invalid(ws(&a, junk));
    }
    // Other app's key works for its app.
    let id = ws(
        &a,
        &sign(
            Algorithm::HS256,
            Some(KID_OTHER),
            SECRET_OTHER,
            &json!({"sub": "x", "exp": NOW + 9}),
        ),
    )
    .expect("valid");
    assert_eq!(id.app, AppId(1));
    assert_eq!(id.actions, Actions::PUBLISH);
}

#[test]
fn time_claims() {
    let a = auth();
    assert_eq!(
        ws(&a, &token(json!({"sub": "a", "exp": NOW}))).unwrap_err(),
        AuthError::Expired
    );
    assert_eq!(
        ws(&a, &token(json!({"sub": "a", "exp": NOW - 1}))).unwrap_err(),
        AuthError::Expired
    );
    assert_eq!(
        ws(&a, &token(json!({"sub": "a", "exp": 0}))).unwrap_err(),
        AuthError::Expired
    );
    assert_eq!(invalid(ws(&a, &token(json!({"sub": "a"})))), "missing exp");
    assert_eq!(
        invalid(ws(&a, &token(json!({"sub": "a", "exp": "soon"})))),
        "malformed exp"
    );
    assert_eq!(
        invalid(ws(&a, &token(json!({"sub": "a", "exp": -5})))),
        "malformed exp"
    );
    assert_eq!(
        invalid(ws(
            &a,
            &token(json!({"sub": "a", "exp": NOW + 10, "nbf": NOW + 1}))
        )),
        "token not yet valid"
    );
    assert!(ws(&a, &token(json!({"sub": "a", "exp": NOW + 10, "nbf": NOW}))).is_ok());
    assert_eq!(
        invalid(ws(
            &a,
            &token(json!({"sub": "a", "exp": NOW + 10, "nbf": "x"}))
        )),
        "malformed nbf"
    );
    // An `exp` beyond the 10-year horizon, or beyond any clock, is invalid (never a panic).
    let horizon = jwt::MAX_EXP_HORIZON_SEC;
    assert!(ws(&a, &token(json!({"sub": "a", "exp": NOW + horizon}))).is_ok());
    for exp in [
        json!(NOW + horizon + 1),
        json!(1e19),
        json!(u64::MAX),
        json!(18_446_744_073_709_551_616.0_f64),
        json!(1.7e308),
        json!((NOW + horizon) as f64 + 1.5),
    ] {
        assert_eq!(
            invalid(ws(&a, &token(json!({"sub": "a", "exp": exp})))),
            "exp too far in the future",
            "{exp}"
        );
    }
    // Expired takes precedence over claim-format problems.
    assert_eq!(
        ws(&a, &token(json!({"sub": "", "exp": NOW - 1}))).unwrap_err(),
        AuthError::Expired
    );
}

#[test]
fn sub_claim() {
    let a = auth();
    let t = |sub: Value| ws(&a, &token(json!({"sub": sub, "exp": NOW + 10})));
    assert!(t(json!("x".repeat(128))).is_ok());
    assert!(t(json!("!~")).is_ok());
    assert_eq!(invalid(t(json!("x".repeat(129)))), "invalid sub");
    assert_eq!(invalid(t(json!(""))), "invalid sub");
    assert_eq!(invalid(t(json!("has space"))), "invalid sub");
    assert_eq!(invalid(t(json!("é"))), "invalid sub");
    assert_eq!(invalid(t(json!(42))), "invalid sub");
    assert_eq!(
        invalid(ws(&a, &token(json!({"exp": NOW + 10})))),
        "missing sub"
    );
}

#[test]
fn permissions_claim() {
    let a = auth();
    let t = |p: Value| {
        ws(
            &a,
            &token(json!({"sub": "a", "exp": NOW + 10, "permissions": p})),
        )
    };
    assert_eq!(t(json!([])).expect("valid").actions, Actions::NONE);
    assert_eq!(t(json!(["send"])).expect("valid").actions, Actions::SEND);
    // A hand-made token asking for `admin` is accepted without it.
    assert_eq!(
        t(json!(["admin", "send"])).expect("valid").actions,
        Actions::SEND
    );
    assert_eq!(invalid(t(json!(["fly"]))), "invalid permissions");
    assert_eq!(invalid(t(json!("publish"))), "invalid permissions");
    assert_eq!(invalid(t(json!([1]))), "invalid permissions");
    assert!(t(json!(vec!["publish"; 16])).is_ok());
    assert_eq!(
        invalid(t(json!(vec!["publish"; 17]))),
        "invalid permissions"
    );
    // Intersection with the key's actions.
    let narrow = sign(
        Algorithm::HS256,
        Some(KID_NARROW),
        SECRET_NARROW,
        &json!({"sub": "a", "exp": NOW + 10, "permissions": ["publish", "subscribe", "send"], "channels": ["rooms/1"]}),
    );
    assert_eq!(ws(&a, &narrow).expect("valid").actions, Actions::SUBSCRIBE);
}

#[test]
fn channels_claim() {
    let a = auth();
    let narrow = |c: Value| {
        ws(
            &a,
            &sign(
                Algorithm::HS256,
                Some(KID_NARROW),
                SECRET_NARROW,
                &json!({"sub": "a", "exp": NOW + 10, "channels": c}),
            ),
        )
    };
    let id = narrow(json!(["rooms/lobby", "org/acme/**"])).expect("inside key");
    assert!(id.scope.allows("rooms/lobby"));
    assert!(!id.scope.allows("rooms/other"));
    assert!(id.scope.allows("org/acme/x/y"));
    assert!(!id.scope.allows("org/other"));
    let id = narrow(json!(["rooms/*"])).expect("equal to key pattern");
    assert!(id.scope.allows("rooms/any"));
    assert_eq!(
        narrow(json!(["rooms/**"])).unwrap_err(),
        AuthError::ChannelsNotAuthorized
    );
    assert_eq!(
        narrow(json!(["elsewhere"])).unwrap_err(),
        AuthError::ChannelsNotAuthorized
    );
    assert_eq!(
        narrow(json!(["**"])).unwrap_err(),
        AuthError::ChannelsNotAuthorized
    );
    assert_eq!(
        narrow(json!(["rooms/a", "x/y"])).unwrap_err(),
        AuthError::ChannelsNotAuthorized
    );
    // Empty claim: nothing is allowed.
    let id = narrow(json!([])).expect("valid");
    assert!(!id.scope.allows("rooms/a"));
    // Format errors are Invalid, not 4003.
    assert_eq!(invalid(narrow(json!(["a/***"]))), "invalid channels");
    assert_eq!(invalid(narrow(json!(["bad\\escape"]))), "invalid channels");
    assert_eq!(invalid(narrow(json!("rooms/a"))), "invalid channels");
    assert_eq!(invalid(narrow(json!([""]))), "invalid channels");
    assert_eq!(invalid(narrow(json!([7]))), "invalid channels");
    let hundred: Vec<String> = (0..100).map(|i| format!("rooms/{i}")).collect();
    assert!(narrow(json!(hundred)).is_ok());
    let too_many: Vec<String> = (0..101).map(|i| format!("rooms/{i}")).collect();
    assert_eq!(invalid(narrow(json!(too_many))), "invalid channels");
    // Literal names with escapes.
    let id = narrow(json!(["rooms/a\\*b"])).expect("valid");
    assert!(id.scope.allows("rooms/a*b"));
    assert!(!id.scope.allows("rooms/axb"));
}

#[test]
fn metadata_claims() {
    let a = auth();
    let t = |k: &str, v: Value| {
        let mut c = json!({"sub": "a", "exp": NOW + 10});
        c[k] = v;
        ws(&a, &token(c))
    };
    assert_eq!(invalid(t("metadata", json!([1]))), "invalid metadata");
    assert_eq!(invalid(t("metadata", json!("str"))), "invalid metadata");
    assert_eq!(invalid(t("peerMetadata", json!(5))), "invalid peerMetadata");
    // Size caps on the compact serialization: {"k":"…"} is 8 bytes + payload.
    assert!(t("metadata", json!({"k": "x".repeat(8 * 1024 - 8)})).is_ok());
    assert_eq!(
        invalid(t("metadata", json!({"k": "x".repeat(8 * 1024 - 7)}))),
        "invalid metadata"
    );
    assert!(t("peerMetadata", json!({"k": "x".repeat(4 * 1024 - 8)})).is_ok());
    assert_eq!(
        invalid(t("peerMetadata", json!({"k": "x".repeat(4 * 1024 - 7)}))),
        "invalid peerMetadata"
    );
    assert_eq!(
        t("metadata", json!({}))
            .expect("ok")
            .metadata_json
            .as_deref(),
        Some("{}")
    );
}

#[test]
fn token_length_cap() {
    let a = auth();
    let long = "a".repeat(jwt::MAX_TOKEN_LEN + 1);
    assert_eq!(invalid(ws(&a, &long)), "token too long");
    assert_eq!(
        invalid(a.authenticate_ws(&format!("token={}", "%41".repeat(20_000)), None, NOW)),
        "credential too long"
    );
}

#[test]
fn query_parsing() {
    let a = auth();
    let jwt = token(json!({"sub": "alice", "exp": NOW + 10}));
    assert!(a
        .authenticate_ws(&format!("v=1&token={jwt}&x"), None, NOW)
        .is_ok());
    // Percent-encoded token and parameter name.
    let enc = jwt.replace('.', "%2E").replace('-', "%2d");
    assert!(a
        .authenticate_ws(&format!("%74oken={enc}"), None, NOW)
        .is_ok());
    assert_eq!(
        invalid(a.authenticate_ws("", None, NOW)),
        "missing token or key"
    );
    assert_eq!(
        invalid(a.authenticate_ws("tokens=1&keys=2", None, NOW)),
        "missing token or key"
    );
    assert_eq!(
        invalid(a.authenticate_ws(&format!("token={jwt}&key=pk_live_open"), None, NOW)),
        "both token and key given"
    );
    assert_eq!(
        invalid(a.authenticate_ws(&format!("token={jwt}&token={jwt}"), None, NOW)),
        "duplicate credential parameter"
    );
    assert_eq!(
        invalid(a.authenticate_ws("token=", None, NOW)),
        "empty credential"
    );
    assert_eq!(
        invalid(a.authenticate_ws("token", None, NOW)),
        "empty credential"
    );
    assert_eq!(
        invalid(a.authenticate_ws("key=%FF", None, NOW)),
        "malformed query"
    );
    invalid(a.authenticate_ws("token=%", None, NOW));
}

#[test]
fn publishable_keys() {
    let a = auth();
    let id = a
        .authenticate_ws("key=pk_live_open", Some("https://anything"), NOW)
        .expect("valid");
    assert_eq!(id.app, AppId(0));
    assert_eq!(
        id.actions,
        Actions::PUBLISH | Actions::SUBSCRIBE | Actions::PRESENCE
    );
    assert_eq!(id.expires_at, None);
    assert!(id.metadata_json.is_none() && id.peer_metadata_json.is_none());
    assert!(id.scope.allows("public/x") && !id.scope.allows("private/x"));
    let uuid = uuid::Uuid::parse_str(&id.peer_id).expect("uuid peer id");
    assert_eq!(uuid.get_version_num(), 4);
    assert!(jwt::is_valid_peer_id(&id.peer_id));
    let id2 = a
        .authenticate_ws("key=pk_live_open", None, NOW)
        .expect("no origin needed");
    assert_ne!(id.peer_id, id2.peer_id, "fresh peer id per connection");
    // Origin checks.
    assert!(a
        .authenticate_ws("key=pk_live_site", Some("https://example.com"), NOW)
        .is_ok());
    assert_eq!(
        invalid(a.authenticate_ws("key=pk_live_site", Some("https://example.com/"), NOW)),
        "origin not allowed"
    );
    assert_eq!(
        invalid(a.authenticate_ws("key=pk_live_site", Some("https://evil.com"), NOW)),
        "origin not allowed"
    );
    assert_eq!(
        invalid(a.authenticate_ws("key=pk_live_site", None, NOW)),
        "origin not allowed"
    );
    assert!(a
        .authenticate_ws("key=pk_live_star", Some("https://evil.com"), NOW)
        .is_ok());
    assert!(a.authenticate_ws("key=pk_live_star", None, NOW).is_ok());
    assert_eq!(
        invalid(a.authenticate_ws("key=pk_live_nope", None, NOW)),
        "unknown key"
    );
    // A secret key id or secret is not a publishable key.
    invalid(a.authenticate_ws(&format!("key={KID}"), None, NOW));
    invalid(a.authenticate_ws(&format!("key={SECRET}"), None, NOW));
}

#[test]
fn secret_key_rest_auth() {
    let a = auth();
    let k = a
        .authenticate_secret(&format!("Bearer {KID}:{SECRET}"))
        .expect("valid");
    assert_eq!(k.app, AppId(0));
    assert_eq!(k.key_index, 0);
    assert_eq!(k.key_id, KID);
    assert_eq!(k.actions, Actions::ALL);
    let k = a
        .authenticate_secret(&format!("  bearer {KID_NARROW}:{SECRET_NARROW} "))
        .expect("valid");
    assert_eq!(k.key_index, 1);
    assert!(k.scope.allows("rooms/1") && !k.scope.allows("x"));
    let k = a
        .authenticate_secret(&format!("Bearer {KID_OTHER}:{SECRET_OTHER}"))
        .expect("valid");
    assert_eq!((k.app, k.key_index), (AppId(1), 0));
    for bad in [
        format!("Bearer {KID}"),
        format!("Bearer {KID}:"),
        format!("Bearer {KID}:{SECRET}x"),
        format!("Bearer {KID}:{}", &SECRET[..SECRET.len() - 1]),
        format!("Bearer {KID}:{SECRET_OTHER}"),
        format!("Bearer {KID_OTHER}:{SECRET}"),
        format!("Bearer sk_id_nope:{SECRET}"),
        format!("Basic {KID}:{SECRET}"),
        format!("{KID}:{SECRET}"),
        format!("Bearer{KID}:{SECRET}"),
        "Bearer pk_live_open".to_owned(),
        String::new(),
    ] {
        assert!(
            a.authenticate_secret(&bad).is_none(),
            "{bad:?} must be refused"
        );
    }
}

#[test]
fn constant_time_eq_works() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"abc", b""));
    assert!(constant_time_eq(b"", b""));
}

fn req(peer: &str) -> MintRequest {
    MintRequest {
        peer_id: peer.into(),
        expires_in_sec: 3600,
        ..MintRequest::default()
    }
}

#[test]
fn mint_round_trip() {
    let a = auth();
    let mut r = req("alice");
    r.channels = Some(vec!["rooms/1".into(), "org/**".into()]);
    r.permissions = Some(vec!["subscribe".into()]);
    r.metadata = Some(json!({"plan": "pro"}));
    r.peer_metadata = Some(json!({"name": "Alice"}));
    let (jwt, exp) = a.mint(KID_NARROW, &r, NOW).expect("mints");
    assert_eq!(exp, NOW + 3600);
    let header = jsonwebtoken::decode_header(&jwt).expect("header");
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), Some(KID_NARROW));
    let id = ws(&a, &jwt).expect("verifies");
    assert_eq!(&*id.peer_id, "alice");
    assert_eq!(id.actions, Actions::SUBSCRIBE);
    assert_eq!(id.expires_at, Some(exp));
    assert_eq!(id.metadata_json.as_deref(), Some(r#"{"plan":"pro"}"#));
    assert_eq!(
        id.peer_metadata_json.as_deref(),
        Some(&br#"{"name":"Alice"}"#[..])
    );
    assert!(
        id.scope.allows("rooms/1") && id.scope.allows("org/a/b") && !id.scope.allows("rooms/2")
    );
    // The token verifies with the HMAC key = whole secret string (what PyJWT would do).
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.validate_exp = false;
    let data = jsonwebtoken::decode::<Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(SECRET_NARROW.as_bytes()),
        &v,
    )
    .expect("independent verification");
    assert_eq!(data.claims["iat"], json!(NOW));
    assert_eq!(data.claims["peerMetadata"], json!({"name": "Alice"}));
    // Expired at exp.
    assert_eq!(a.verify_token(&jwt, exp).unwrap_err(), AuthError::Expired);
    assert!(a.verify_token(&jwt, exp - 1).is_ok());
    // Minimal request: no optional claims.
    let (jwt, _) = a.mint(KID, &req("bob"), NOW).expect("mints");
    let id = ws(&a, &jwt).expect("verifies");
    assert_eq!(id.actions, Actions::CONNECTION);
    assert!(id.scope.token_patterns().is_none());
}

#[test]
fn mint_errors() {
    let a = auth();
    let code = |r: &MintRequest, kid: &str| a.mint(kid, r, NOW).expect_err("must fail").code();
    assert_eq!(code(&req("alice"), "sk_id_nope"), "invalid_request");
    assert_eq!(code(&req(""), KID), "invalid_request");
    assert_eq!(code(&req("a b"), KID), "invalid_request");
    let mut r = req("alice");
    r.expires_in_sec = 0;
    assert_eq!(code(&r, KID), "invalid_request");
    r.expires_in_sec = 86_401;
    assert_eq!(code(&r, KID), "invalid_request");
    r.expires_in_sec = 86_400;
    assert!(a.mint(KID, &r, NOW).is_ok());
    let mut r = req("alice");
    r.channels = Some(vec!["x/***".into()]);
    assert_eq!(code(&r, KID), "invalid_request");
    r.channels = Some(vec!["rooms/**".into()]);
    assert_eq!(code(&r, KID_NARROW), "channel_not_authorized");
    r.channels = Some((0..101).map(|i| format!("rooms/{i}")).collect());
    assert_eq!(code(&r, KID_NARROW), "invalid_request");
    let mut r = req("alice");
    r.permissions = Some(vec!["publish".into()]);
    assert_eq!(code(&r, KID_NARROW), "action_not_permitted");
    r.permissions = Some(vec!["fly".into()]);
    assert_eq!(code(&r, KID), "invalid_request");
    // `admin` is never a token permission, even from a key that has it.
    r.permissions = Some(vec!["publish".into(), "admin".into()]);
    assert!(matches!(
        a.mint(KID, &r, NOW),
        Err(jwt::MintError::InvalidRequest(m)) if m.contains("admin")
    ));
    let mut r = req("alice");
    r.metadata = Some(json!([1, 2]));
    assert_eq!(code(&r, KID), "invalid_request");
    r.metadata = Some(json!({"k": "x".repeat(9000)}));
    assert_eq!(code(&r, KID), "invalid_request");
    let mut r = req("alice");
    r.peer_metadata = Some(json!("x"));
    assert_eq!(code(&r, KID), "invalid_request");
    // Token over 16 KiB: many long channel patterns.
    let mut r = req("alice");
    r.channels = Some(
        (0..100)
            .map(|i| format!("{i}/{}", "c".repeat(200)))
            .collect(),
    );
    assert_eq!(code(&r, KID), "invalid_request");
}

#[test]
fn mint_request_serde() {
    let r: MintRequest = serde_json::from_str(
        r#"{"peerId":"alice","channels":["a/*"],"peerMetadata":{"n":1},"extra":true}"#,
    )
    .expect("parses");
    assert_eq!(r.peer_id, "alice");
    assert_eq!(r.expires_in_sec, jwt::DEFAULT_EXPIRES_IN_SEC);
    assert_eq!(r.channels.as_deref(), Some(&["a/*".to_owned()][..]));
    assert_eq!(r.peer_metadata, Some(json!({"n": 1})));
    let r: MintRequest =
        serde_json::from_str(r#"{"peerId":"b","expiresInSec":60}"#).expect("parses");
    assert_eq!(r.expires_in_sec, 60);
}

#[test]
fn scope_allows_pattern() {
    let a = auth();
    let narrow = sign(
        Algorithm::HS256,
        Some(KID_NARROW),
        SECRET_NARROW,
        &json!({"sub": "a", "exp": NOW + 10, "channels": ["org/acme/**", "rooms/*"]}),
    );
    let id = ws(&a, &narrow).expect("valid");
    let p = |s: &str| glob::Pattern::parse(s).expect("pattern");
    assert!(id.scope.allows_pattern(&p("org/acme/runs/**")));
    assert!(id.scope.allows_pattern(&p("org/acme/*")));
    assert!(id.scope.allows_pattern(&p("rooms/*")));
    assert!(!id.scope.allows_pattern(&p("org/**")));
    assert!(!id.scope.allows_pattern(&p("rooms/**")));
    assert!(!id.scope.allows_pattern(&p("**")));
    let open = ChannelScope::unrestricted();
    assert!(open.allows_pattern(&p("**")));
    assert!(open.allows("x/y"));
}

#[test]
fn never_panics_on_garbage_queries() {
    let a = auth();
    for q in [
        "&&&",
        "=",
        "token=%%%",
        "key=%00",
        "token=a.b.c&key",
        "token=..",
        "token=e30.e30.",
        "token=e30.e30.e30",
    ] {
        let _ = a.authenticate_ws(q, Some(""), NOW);
    }
    for h in [
        "",
        " ",
        "Bearer",
        "Bearer ",
        "Bearer :",
        "Bearer ::::",
        "bearer \u{0}:\u{0}",
    ] {
        assert!(a.authenticate_secret(h).is_none());
    }
}
