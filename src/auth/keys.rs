//! Key configuration (apps, secret keys, publishable keys), its validation, and key lookup tables.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::glob::{Pattern, PatternError};
use super::{Actions, AppId, UnknownAction};

/// Prefix of a secret key's public id.
pub(crate) const SECRET_KEY_ID_PREFIX: &str = "sk_id_";
/// Prefix of a secret key's HMAC secret.
pub(crate) const SECRET_PREFIX: &str = "sk_secret_";
/// Prefix of a publishable key.
pub(crate) const PUBLISHABLE_KEY_PREFIX: &str = "pk_live_";
/// Maximum length in bytes of a key id, secret or publishable key.
pub(crate) const MAX_KEY_LEN: usize = 256;
/// Maximum number of channel patterns on one key.
pub(crate) const MAX_KEY_PATTERNS: usize = 1000;
/// Shortest accepted secret, in bytes of the whole secret string (the HS256 key): RFC 7518
/// section 3.2 requires an HMAC key of at least the hash size, 256 bits.
pub(crate) const MIN_SECRET_LEN: usize = 32;
/// The secrets shown as examples in the documentation (README.md, docs/). Anyone can read
/// them, so a config that copies one verbatim is refused at start. Keep this list in step
/// with the docs: the unit test `doc_example_secrets_are_listed` greps them for `sk_secret_`.
pub(crate) const DOC_EXAMPLE_SECRETS: &[&str] = &["sk_secret_change-me-to-32-random-characters"];

/// One tenant: its name, optional connection cap and keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct AppConfig {
    /// The app's name (unique across the config), e.g. `"dev"`.
    pub id: String,
    /// Maximum concurrent WebSocket connections for the app (close 4010 beyond); `None` = unlimited.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Secret keys (REST auth and JWT signing).
    #[serde(default)]
    pub secret_keys: Vec<SecretKeyConfig>,
    /// Publishable keys (browser `?key=` connections).
    #[serde(default)]
    pub publishable_keys: Vec<PublishableKeyConfig>,
    /// [ext] History rules (protocol §8.1): the first whose pattern matches a channel
    /// applies; a channel no rule matches has no history.
    #[serde(default)]
    pub history: Vec<HistoryConfig>,
}

/// [ext] One `[[apps.history]]` entry (protocol §8.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct HistoryConfig {
    /// Channel patterns (glob syntax) this rule covers.
    pub channels: Vec<String>,
    /// Messages retained per channel, 1..=[`MAX_HISTORY_SIZE`].
    pub size: u32,
    /// Seconds a message stays retained, 1..=[`MAX_HISTORY_TTL_SECS`].
    pub ttl_secs: u32,
}

/// Largest `size` of a history rule.
pub const MAX_HISTORY_SIZE: u32 = 100_000;
/// Largest `ttl_secs` of a history rule (30 days).
pub const MAX_HISTORY_TTL_SECS: u32 = 30 * 86_400;

/// A compiled history rule: what a matching channel retains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRule {
    /// Messages retained.
    pub size: u32,
    /// Seconds each is retained.
    pub ttl_secs: u32,
}

/// A secret key: public id + HMAC secret, with the scope it caps.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SecretKeyConfig {
    /// Public id, `sk_id_…` (JWT header `kid`, first half of the REST Bearer credential).
    pub id: String,
    /// HMAC secret, `sk_secret_…`; its whole UTF-8 text is the HS256 key.
    pub secret: String,
    /// Channel patterns (glob syntax); default `["**"]`.
    #[serde(default = "default_all_patterns")]
    pub channel_patterns: Vec<String>,
    /// Allowed actions; default all five (publish, subscribe, presence, send, admin).
    #[serde(default = "default_secret_actions")]
    pub actions: Vec<String>,
}

impl fmt::Debug for SecretKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeyConfig")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("channel_patterns", &self.channel_patterns)
            .field("actions", &self.actions)
            .finish()
    }
}

/// A browser-safe publishable key with a fixed scope.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PublishableKeyConfig {
    /// The key, `pk_live_…`.
    pub key: String,
    /// Channel patterns (glob syntax); required.
    pub channel_patterns: Vec<String>,
    /// Allowed actions; default publish, subscribe, presence (`admin` is refused).
    #[serde(default = "default_publishable_actions")]
    pub actions: Vec<String>,
    /// Allowed `Origin` header values (exact match; `"*"` = any, even absent). Empty = no check.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn default_all_patterns() -> Vec<String> {
    vec!["**".to_owned()]
}

/// The actions of a secret key that does not configure `actions`: all five.
pub fn default_secret_actions() -> Vec<String> {
    ["publish", "subscribe", "presence", "send", "admin"]
        .map(str::to_owned)
        .to_vec()
}

fn default_publishable_actions() -> Vec<String> {
    ["publish", "subscribe", "presence"]
        .map(str::to_owned)
        .to_vec()
}

/// `len` random ASCII alphanumerics from the OS CSPRNG.
fn random_alnum(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The embedded default app: id `"dev"`, one secret key `sk_id_<16 alnum>` /
/// `sk_secret_<32 alnum>` (fresh random values on every call), patterns `["**"]`, all five
/// actions.
pub fn generate_dev_app() -> AppConfig {
    AppConfig {
        id: "dev".to_owned(),
        max_connections: None,
        secret_keys: vec![SecretKeyConfig {
            id: format!("{SECRET_KEY_ID_PREFIX}{}", random_alnum(16)),
            secret: format!("{SECRET_PREFIX}{}", random_alnum(32)),
            channel_patterns: default_all_patterns(),
            actions: default_secret_actions(),
        }],
        publishable_keys: Vec::new(),
        history: Vec::new(),
    }
}

/// Compiled app.
pub(crate) struct App {
    pub(crate) name: Box<str>,
    pub(crate) max_connections: Option<u32>,
    /// History rules in config order: (patterns, rule).
    pub(crate) history: Vec<(Vec<Pattern>, HistoryRule)>,
}

/// Compiled secret key.
pub(crate) struct SecretKey {
    pub(crate) app: AppId,
    /// Index within the app's `secret_keys`.
    pub(crate) index: usize,
    pub(crate) id: Box<str>,
    pub(crate) secret: Box<[u8]>,
    pub(crate) actions: Actions,
    pub(crate) patterns: Arc<[Pattern]>,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
}

/// Compiled publishable key.
pub(crate) struct PublishableKey {
    pub(crate) app: AppId,
    pub(crate) actions: Actions,
    pub(crate) patterns: Arc<[Pattern]>,
    /// `None` = any origin (empty list or an entry `"*"`).
    pub(crate) allowed_origins: Option<Box<[Box<str>]>>,
}

/// Immutable lookup tables built from the config.
pub(crate) struct KeyStore {
    pub(crate) apps: Vec<App>,
    pub(crate) secret_keys: Vec<SecretKey>,
    pub(crate) secret_by_id: HashMap<Box<str>, usize>,
    pub(crate) publishable_keys: Vec<PublishableKey>,
    pub(crate) publishable_by_key: HashMap<Box<str>, usize>,
}

/// Which configured key a [`KeyError`] is about. Displays as `app "a" secret key #0`, with
/// the key's public id once it is known (`app "a" secret key #0 ("sk_id_1")`), or as
/// `app "a" publishable key #0`. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    /// The app's configured id.
    pub app: String,
    /// Secret or publishable.
    pub kind: KeyKind,
    /// Position in the app's `secret_keys` or `publishable_keys` list.
    pub index: usize,
    /// The secret key's public id, once it passed its own checks.
    pub id: Option<String>,
}

/// The two kinds of configured key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `secret_keys` entry.
    Secret,
    /// `publishable_keys` entry.
    Publishable,
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            KeyKind::Secret => "secret",
            KeyKind::Publishable => "publishable",
        };
        write!(f, "app {:?} {kind} key #{}", self.app, self.index)?;
        match &self.id {
            Some(id) => write!(f, " ({id:?})"),
            None => Ok(()),
        }
    }
}

/// Which text of a key failed [`KeyTextError`]'s checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// A secret key's public id (`sk_id_…`).
    Id,
    /// A secret key's secret (`sk_secret_…`).
    Secret,
    /// A publishable key (`pk_live_…`).
    Key,
}

impl fmt::Display for KeyPart {
    /// The suffix after the [`KeyRef`] in a message: `" id"`, `" secret"` or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPart::Id => " id",
            KeyPart::Secret => " secret",
            KeyPart::Key => "",
        })
    }
}

/// Why a key id, secret or publishable key is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    /// It does not start with its prefix (`sk_id_`, `sk_secret_` or `pk_live_`).
    #[error("must start with {0:?}")]
    MissingPrefix(&'static str),
    /// It is only the prefix.
    #[error("has nothing after {0:?}")]
    NothingAfterPrefix(&'static str),
    /// Longer than [`MAX_KEY_LEN`].
    #[error("longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    /// A byte outside printable ASCII (0x21–0x7E).
    #[error("must be printable ASCII without spaces")]
    NotPrintable,
}

/// Why the configured apps and keys were refused at start. Messages name the key, never
/// its secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An `[[apps.history]]` entry is invalid.
    #[error("app {app:?} history entry #{index}: {why}")]
    BadHistory {
        /// The app's id.
        app: String,
        /// Position in the app's history list.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The app list is empty.
    #[error("no apps configured")]
    NoApps,
    /// More apps than an [`AppId`] can number.
    #[error("too many apps")]
    TooManyApps,
    /// The app at this position has an empty or over-long id.
    #[error("app #{index}: id must be 1-128 bytes")]
    AppIdLength {
        /// Position in the app list.
        index: usize,
    },
    /// Two apps share an id.
    #[error("duplicate app id {id:?}")]
    DuplicateApp {
        /// The repeated id.
        id: String,
    },
    /// A key id, secret or publishable key is malformed.
    #[error("{key}{part} {error}")]
    BadText {
        /// The key.
        key: KeyRef,
        /// Which of its texts.
        part: KeyPart,
        /// What is wrong with it.
        error: KeyTextError,
    },
    /// A secret key id contains `:` (it separates id and secret in REST credentials).
    #[error("{key} id must not contain ':'")]
    ColonInKeyId {
        /// The key.
        key: KeyRef,
    },
    /// A secret shorter than [`MIN_SECRET_LEN`].
    #[error(
        "{key} secret is {len} bytes; at least {MIN_SECRET_LEN} are required \
         (e.g. sk_secret_ followed by 32 random characters)"
    )]
    WeakSecret {
        /// The key.
        key: KeyRef,
        /// The secret's length in bytes.
        len: usize,
    },
    /// A secret copied from the documentation ([`DOC_EXAMPLE_SECRETS`]).
    #[error(
        "{key} secret is the documentation's example secret; generate your own \
         (e.g. sk_secret_ followed by 32 random characters)"
    )]
    ExampleSecret {
        /// The key.
        key: KeyRef,
    },
    /// An `actions` entry that is no action name.
    #[error("{key}: {error}")]
    UnknownAction {
        /// The key.
        key: KeyRef,
        /// The unknown name.
        error: UnknownAction,
    },
    /// More than [`MAX_KEY_PATTERNS`] channel patterns.
    #[error("{key}: more than {MAX_KEY_PATTERNS} channel patterns")]
    TooManyPatterns {
        /// The key.
        key: KeyRef,
    },
    /// A channel pattern that does not parse.
    #[error("{key}: channel pattern {pattern:?}: {error}")]
    BadPattern {
        /// The key.
        key: KeyRef,
        /// The pattern as configured.
        pattern: String,
        /// Why it does not parse.
        error: PatternError,
    },
    /// Two secret keys (in any apps) share an id.
    #[error("duplicate secret key id {id:?}")]
    DuplicateSecretKeyId {
        /// The repeated id.
        id: String,
    },
    /// A publishable key asks for `admin`.
    #[error("{key}: the admin action is for secret keys only (REST API)")]
    AdminOnPublishableKey {
        /// The key.
        key: KeyRef,
    },
    /// An empty `allowed_origins` entry.
    #[error("{key}: empty allowed origin")]
    EmptyOrigin {
        /// The key.
        key: KeyRef,
    },
    /// Two publishable keys (in any apps) are the same.
    #[error("duplicate publishable key {key:?}")]
    DuplicatePublishableKey {
        /// The repeated key.
        key: String,
    },
}

/// Checks `s` is `prefix` + 1.. printable ASCII bytes (0x21–0x7E), total ≤ [`MAX_KEY_LEN`].
fn check_key_text(s: &str, prefix: &'static str) -> Result<(), KeyTextError> {
    let rest = s
        .strip_prefix(prefix)
        .ok_or(KeyTextError::MissingPrefix(prefix))?;
    if rest.is_empty() {
        return Err(KeyTextError::NothingAfterPrefix(prefix));
    }
    if s.len() > MAX_KEY_LEN {
        return Err(KeyTextError::TooLong);
    }
    if !s.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return Err(KeyTextError::NotPrintable);
    }
    Ok(())
}

/// Refuses a secret shorter than [`MIN_SECRET_LEN`] or copied from the documentation
/// ([`DOC_EXAMPLE_SECRETS`]). The error names the key, never the secret.
fn check_secret_strength(key: &KeyRef, secret: &str) -> Result<(), KeyError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::WeakSecret {
            key: key.clone(),
            len: secret.len(),
        });
    }
    if DOC_EXAMPLE_SECRETS.contains(&secret) {
        return Err(KeyError::ExampleSecret { key: key.clone() });
    }
    Ok(())
}

/// Parses a key's pattern list.
fn compile_patterns(key: &KeyRef, patterns: &[String]) -> Result<Arc<[Pattern]>, KeyError> {
    if patterns.len() > MAX_KEY_PATTERNS {
        return Err(KeyError::TooManyPatterns { key: key.clone() });
    }
    patterns
        .iter()
        .map(|p| {
            Pattern::parse(p).map_err(|error| KeyError::BadPattern {
                key: key.clone(),
                pattern: p.clone(),
                error,
            })
        })
        .collect()
}

impl KeyStore {
    /// Validates the config and builds the lookup tables.
    pub(crate) fn build(configs: &[AppConfig]) -> Result<KeyStore, KeyError> {
        if configs.is_empty() {
            return Err(KeyError::NoApps);
        }
        if configs.len() > usize::from(u16::MAX) + 1 {
            return Err(KeyError::TooManyApps);
        }
        let mut store = KeyStore {
            apps: Vec::with_capacity(configs.len()),
            secret_keys: Vec::new(),
            secret_by_id: HashMap::new(),
            publishable_keys: Vec::new(),
            publishable_by_key: HashMap::new(),
        };
        for (i, cfg) in configs.iter().enumerate() {
            let app = AppId(u16::try_from(i).map_err(|_| KeyError::TooManyApps)?);
            if cfg.id.is_empty() || cfg.id.len() > 128 {
                return Err(KeyError::AppIdLength { index: i });
            }
            if store.apps.iter().any(|a| *a.name == *cfg.id) {
                return Err(KeyError::DuplicateApp { id: cfg.id.clone() });
            }
            let mut history = Vec::with_capacity(cfg.history.len());
            for (index, h) in cfg.history.iter().enumerate() {
                let bad = |why: &'static str| KeyError::BadHistory {
                    app: cfg.id.clone(),
                    index,
                    why,
                };
                if h.channels.is_empty() {
                    return Err(bad("channels must not be empty"));
                }
                if !(1..=MAX_HISTORY_SIZE).contains(&h.size) {
                    return Err(bad("size must be 1..=100000"));
                }
                if !(1..=MAX_HISTORY_TTL_SECS).contains(&h.ttl_secs) {
                    return Err(bad("ttl_secs must be 1..=2592000"));
                }
                let patterns = h
                    .channels
                    .iter()
                    .map(|p| Pattern::parse(p).map_err(|_| bad("a channel pattern is invalid")))
                    .collect::<Result<Vec<_>, _>>()?;
                let rule = HistoryRule {
                    size: h.size,
                    ttl_secs: h.ttl_secs,
                };
                history.push((patterns, rule));
            }
            store.apps.push(App {
                name: cfg.id.as_str().into(),
                max_connections: cfg.max_connections,
                history,
            });
            for (index, sk) in cfg.secret_keys.iter().enumerate() {
                let mut key = KeyRef {
                    app: cfg.id.clone(),
                    kind: KeyKind::Secret,
                    index,
                    id: None,
                };
                let bad_text = |key: &KeyRef, part, error| KeyError::BadText {
                    key: key.clone(),
                    part,
                    error,
                };
                check_key_text(&sk.id, SECRET_KEY_ID_PREFIX)
                    .map_err(|e| bad_text(&key, KeyPart::Id, e))?;
                if sk.id.contains(':') {
                    return Err(KeyError::ColonInKeyId { key });
                }
                key.id = Some(sk.id.clone());
                check_key_text(&sk.secret, SECRET_PREFIX)
                    .map_err(|e| bad_text(&key, KeyPart::Secret, e))?;
                check_secret_strength(&key, &sk.secret)?;
                let actions =
                    Actions::parse_list(&sk.actions).map_err(|error| KeyError::UnknownAction {
                        key: key.clone(),
                        error,
                    })?;
                let patterns = compile_patterns(&key, &sk.channel_patterns)?;
                let slot = store.secret_keys.len();
                if store
                    .secret_by_id
                    .insert(sk.id.as_str().into(), slot)
                    .is_some()
                {
                    return Err(KeyError::DuplicateSecretKeyId { id: sk.id.clone() });
                }
                store.secret_keys.push(SecretKey {
                    app,
                    index,
                    id: sk.id.as_str().into(),
                    secret: sk.secret.as_bytes().into(),
                    actions,
                    patterns,
                    encoding: EncodingKey::from_secret(sk.secret.as_bytes()),
                    decoding: DecodingKey::from_secret(sk.secret.as_bytes()),
                });
            }
            for (index, pk) in cfg.publishable_keys.iter().enumerate() {
                let key = KeyRef {
                    app: cfg.id.clone(),
                    kind: KeyKind::Publishable,
                    index,
                    id: None,
                };
                check_key_text(&pk.key, PUBLISHABLE_KEY_PREFIX).map_err(|error| {
                    KeyError::BadText {
                        key: key.clone(),
                        part: KeyPart::Key,
                        error,
                    }
                })?;
                let actions =
                    Actions::parse_list(&pk.actions).map_err(|error| KeyError::UnknownAction {
                        key: key.clone(),
                        error,
                    })?;
                if actions.contains(Actions::ADMIN) {
                    return Err(KeyError::AdminOnPublishableKey { key });
                }
                let patterns = compile_patterns(&key, &pk.channel_patterns)?;
                if pk.allowed_origins.iter().any(|o| o.is_empty()) {
                    return Err(KeyError::EmptyOrigin { key });
                }
                let allowed_origins = if pk.allowed_origins.is_empty()
                    || pk.allowed_origins.iter().any(|o| o == "*")
                {
                    None
                } else {
                    Some(
                        pk.allowed_origins
                            .iter()
                            .map(|o| o.as_str().into())
                            .collect(),
                    )
                };
                let slot = store.publishable_keys.len();
                if store
                    .publishable_by_key
                    .insert(pk.key.as_str().into(), slot)
                    .is_some()
                {
                    return Err(KeyError::DuplicatePublishableKey {
                        key: pk.key.clone(),
                    });
                }
                store.publishable_keys.push(PublishableKey {
                    app,
                    actions,
                    patterns,
                    allowed_origins,
                });
            }
        }
        Ok(store)
    }

    /// The secret key with public id `id`.
    pub(crate) fn secret_key(&self, id: &str) -> Option<&SecretKey> {
        self.secret_by_id
            .get(id)
            .and_then(|&i| self.secret_keys.get(i))
    }

    /// The publishable key `key`.
    pub(crate) fn publishable_key(&self, key: &str) -> Option<&PublishableKey> {
        self.publishable_by_key
            .get(key)
            .and_then(|&i| self.publishable_keys.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sk(id: &str, secret: &str) -> SecretKeyConfig {
        SecretKeyConfig {
            id: id.into(),
            secret: secret.into(),
            channel_patterns: default_all_patterns(),
            actions: default_secret_actions(),
        }
    }

    fn app(id: &str, keys: Vec<SecretKeyConfig>) -> AppConfig {
        AppConfig {
            id: id.into(),
            max_connections: None,
            secret_keys: keys,
            publishable_keys: vec![],
            history: vec![],
        }
    }

    /// Long enough to pass the strength check.
    const S1: &str = "sk_secret_0123456789abcdef0123456789abcdef";
    const S2: &str = "sk_secret_fedcba9876543210fedcba9876543210";

    fn build_err(apps: &[AppConfig]) -> String {
        match KeyStore::build(apps) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dev_app_is_valid_and_random() {
        let a = generate_dev_app();
        let b = generate_dev_app();
        assert_eq!(a.id, "dev");
        let k = &a.secret_keys[0];
        assert_eq!(k.id.len(), SECRET_KEY_ID_PREFIX.len() + 16);
        assert_eq!(k.secret.len(), SECRET_PREFIX.len() + 32);
        assert!(k.id[SECRET_KEY_ID_PREFIX.len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(k.channel_patterns, vec!["**"]);
        assert_eq!(k.actions.len(), 5);
        assert_ne!(a.secret_keys[0].secret, b.secret_keys[0].secret);
        let store = KeyStore::build(std::slice::from_ref(&a)).expect("dev app valid");
        assert_eq!(
            store.secret_key(&k.id).map(|s| s.actions),
            Some(Actions::ALL)
        );
        assert!(
            !format!("{a:?}").contains(&k.secret),
            "Debug must redact secrets"
        );
    }

    #[test]
    fn serde_defaults_and_unknown_fields() {
        let json = r#"{"id":"a","secret_keys":[{"id":"sk_id_1","secret":"sk_secret_1"}],
            "publishable_keys":[{"key":"pk_live_1","channel_patterns":["pub/*"]}]}"#;
        let cfg: AppConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(cfg.secret_keys[0].channel_patterns, vec!["**"]);
        assert_eq!(cfg.secret_keys[0].actions.len(), 5);
        assert!(cfg.secret_keys[0].actions.iter().any(|a| a == "admin"));
        assert_eq!(
            cfg.publishable_keys[0].actions,
            vec!["publish", "subscribe", "presence"]
        );
        assert!(cfg.publishable_keys[0].allowed_origins.is_empty());
        assert_eq!(cfg.max_connections, None);
        let bad = r#"{"id":"a","bogus":1}"#;
        assert!(serde_json::from_str::<AppConfig>(bad).is_err());
        let bad_pk = r#"{"id":"a","publishable_keys":[{"key":"pk_live_1"}]}"#;
        assert!(
            serde_json::from_str::<AppConfig>(bad_pk).is_err(),
            "patterns required"
        );
        let round = serde_json::to_string(&cfg).expect("serializes");
        let again: AppConfig = serde_json::from_str(&round).expect("round trip");
        assert_eq!(again.secret_keys[0].secret, "sk_secret_1");
    }

    #[test]
    fn validation_errors() {
        assert!(build_err(&[]).contains("no apps"));
        assert!(build_err(&[app("a", vec![sk("id_1", "sk_secret_1")])]).contains("sk_id_"));
        assert!(build_err(&[app("a", vec![sk("sk_id_", "sk_secret_1")])]).contains("nothing"));
        assert!(build_err(&[app("a", vec![sk("sk_id_1", "secret")])]).contains("sk_secret_"));
        assert!(build_err(&[app("a", vec![sk("sk_id_a:b", "sk_secret_1")])]).contains("':'"));
        assert!(build_err(&[app("a", vec![sk("sk_id_a b", "sk_secret_1")])]).contains("ASCII"));
        let dup = build_err(&[
            app("a", vec![sk("sk_id_1", S1)]),
            app("b", vec![sk("sk_id_1", S2)]),
        ]);
        assert!(dup.contains("duplicate secret key id"));
        assert!(build_err(&[app("a", vec![]), app("a", vec![])]).contains("duplicate app"));
        assert!(build_err(&[app("", vec![])]).contains("id must be"));
        let mut bad_action = sk("sk_id_1", S1);
        bad_action.actions = vec!["fly".into()];
        assert!(build_err(&[app("a", vec![bad_action])]).contains("fly"));
        let mut bad_pattern = sk("sk_id_1", S1);
        bad_pattern.channel_patterns = vec!["a/***".into()];
        assert!(build_err(&[app("a", vec![bad_pattern])]).contains("a/***"));
        let mut with_pk = app("a", vec![]);
        with_pk.publishable_keys = vec![PublishableKeyConfig {
            key: "pk_test_1".into(),
            channel_patterns: vec!["**".into()],
            actions: default_publishable_actions(),
            allowed_origins: vec![],
        }];
        assert!(build_err(&[with_pk.clone()]).contains("pk_live_"));
        with_pk.publishable_keys[0].key = "pk_live_1".into();
        let mut other = app("b", vec![]);
        other.publishable_keys = with_pk.publishable_keys.clone();
        assert!(build_err(&[with_pk.clone(), other]).contains("duplicate publishable"));
        with_pk.publishable_keys[0].allowed_origins = vec![String::new()];
        assert!(build_err(&[with_pk.clone()]).contains("empty allowed origin"));
        with_pk.publishable_keys[0].allowed_origins = vec![];
        with_pk.publishable_keys[0].actions = vec!["subscribe".into(), "admin".into()];
        assert!(build_err(&[with_pk]).contains("secret keys only"));
    }

    #[test]
    fn weak_and_example_secrets_are_refused_without_echoing_them() {
        let short = "sk_secret_0123456789abcdefghijk"; // 31 bytes
        let e = build_err(&[app("a", vec![sk("sk_id_short", short)])]);
        assert!(e.contains("sk_id_short") && e.contains("31 bytes"), "{e}");
        assert!(!e.contains(short), "{e}");
        let just = "sk_secret_0123456789abcdefghijkl"; // 32 bytes
        assert!(KeyStore::build(&[app("a", vec![sk("sk_id_ok", just)])]).is_ok());
        for example in DOC_EXAMPLE_SECRETS {
            let e = build_err(&[app("a", vec![sk("sk_id_doc", example)])]);
            assert!(
                e.contains("sk_id_doc") && e.contains("example secret"),
                "{e}"
            );
            assert!(!e.contains(example), "{e}");
        }
    }

    /// Every full `sk_secret_…` value in README.md and docs/ is in [`DOC_EXAMPLE_SECRETS`]
    /// (or too short to be accepted anyway).
    #[test]
    fn doc_example_secrets_are_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
            files.push(entry.expect("docs entry").path());
        }
        let mut found = 0;
        for file in files.iter().filter(|f| f.is_file()) {
            let text = std::fs::read_to_string(file).expect("readable doc");
            for (at, _) in text.match_indices(SECRET_PREFIX) {
                let value: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_graphic() && !"\"'`:,)]}".contains(*c))
                    .collect();
                if value.len() >= MIN_SECRET_LEN {
                    found += 1;
                    assert!(
                        DOC_EXAMPLE_SECRETS.contains(&value.as_str()),
                        "{} shows the secret {value:?}: add it to DOC_EXAMPLE_SECRETS",
                        file.display()
                    );
                }
            }
        }
        assert!(found >= 1, "the docs show no example secret any more");
    }
}
