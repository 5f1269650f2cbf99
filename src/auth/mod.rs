//! Authentication (sans-IO): apps, keys, JWTs, channel patterns and the effective scope of a peer.
//!
//! Entry point: [`Authenticator`], built once from [`keys::AppConfig`]s and shared by `Arc`
//! across shards. It authenticates WebSocket upgrades ([`Authenticator::authenticate_ws`]),
//! REST Bearer credentials ([`Authenticator::authenticate_secret`]) and mints HS256 JWTs
//! ([`Authenticator::mint`]). Nothing here performs I/O or reads the clock: callers pass
//! `now_unix`.

pub mod glob;
pub mod jwt;
pub mod keys;

use std::borrow::Cow;
use std::fmt;
use std::ops::{BitAnd, BitOr};
use std::sync::Arc;

use glob::{pattern_within, Pattern};
use keys::{HistoryRule, KeyError};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use crate::protocol::close;

/// Index of an app in the configured app list (`0..app_count()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub u16);

/// A set of actions a connection or key may perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Actions(u8);

impl Actions {
    /// `publish`: publish to a channel.
    pub(crate) const PUBLISH: Actions = Actions(1);
    /// `subscribe`: subscribe to a channel.
    pub(crate) const SUBSCRIBE: Actions = Actions(2);
    /// `presence`: receive presence frames / query the roster.
    pub(crate) const PRESENCE: Actions = Actions(4);
    /// `send`: direct messages to a peer.
    pub(crate) const SEND: Actions = Actions(8);
    /// `admin`: the REST admin endpoints (`DELETE /v1/peers/{id}`, `GET /v1/usage`). Secret
    /// keys only; never part of a WebSocket identity and never put in a minted token.
    pub(crate) const ADMIN: Actions = Actions(16);
    /// No action.
    pub(crate) const NONE: Actions = Actions(0);
    /// The four actions a WebSocket connection can hold (everything but `admin`).
    pub(crate) const CONNECTION: Actions = Actions(15);
    /// All five actions.
    pub const ALL: Actions = Actions(31);

    /// Wire names, in bit order.
    const NAMES: [(&'static str, Actions); 5] = [
        ("publish", Actions::PUBLISH),
        ("subscribe", Actions::SUBSCRIBE),
        ("presence", Actions::PRESENCE),
        ("send", Actions::SEND),
        ("admin", Actions::ADMIN),
    ];

    /// True when every action in `other` is in `self`.
    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Actions in both sets.
    pub(crate) fn intersection(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    /// Actions in either set.
    pub(crate) fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits (PUBLISH=1, SUBSCRIBE=2, PRESENCE=4, SEND=8, ADMIN=16).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Builds a set from raw bits, dropping unknown bits.
    pub fn from_bits_truncate(bits: u8) -> Actions {
        Actions(bits & Actions::ALL.0)
    }

    /// Parses one wire name (`"publish"`, `"subscribe"`, `"presence"`, `"send"`, `"admin"`;
    /// case-sensitive).
    pub fn parse(name: &str) -> Option<Actions> {
        Actions::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, a)| a)
    }

    /// Parses a list of wire names into a set (duplicates allowed; empty list = no action).
    /// The error names the first unknown entry.
    pub(crate) fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Actions, UnknownAction> {
        names.iter().try_fold(Actions::NONE, |acc, n| {
            let n = n.as_ref();
            Actions::parse(n)
                .map(|a| acc.union(a))
                .ok_or_else(|| UnknownAction(n.to_owned()))
        })
    }

    /// The wire names of the actions in the set, in canonical order.
    pub(crate) fn names(self) -> Vec<&'static str> {
        Actions::NAMES
            .iter()
            .filter(|(_, a)| self.contains(*a))
            .map(|&(n, _)| n)
            .collect()
    }
}

/// An action name that is none of `publish`, `subscribe`, `presence`, `send`, `admin`.
/// Dereferences to the name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}")]
pub struct UnknownAction(pub String);

impl std::ops::Deref for UnknownAction {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl BitAnd for Actions {
    type Output = Actions;
    fn bitand(self, rhs: Actions) -> Actions {
        self.intersection(rhs)
    }
}

impl BitOr for Actions {
    type Output = Actions;
    fn bitor(self, rhs: Actions) -> Actions {
        self.union(rhs)
    }
}

impl fmt::Display for Actions {
    /// Comma-separated wire names, e.g. `publish,subscribe`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Effective channel scope: key patterns ∩ token `channels` claim (if present).
///
/// A channel is allowed iff it matches some key pattern AND (there is no token claim OR it
/// matches some claim entry). Channel *validity* (length, control chars, reserved prefixes) is
/// not checked here; that is the protocol layer's job.
#[derive(Clone, Debug)]
pub struct ChannelScope {
    key: Arc<[Pattern]>,
    token: Option<Arc<[Pattern]>>,
}

impl ChannelScope {
    /// A scope from key patterns and an optional token `channels` claim.
    pub fn new(key: Arc<[Pattern]>, token: Option<Arc<[Pattern]>>) -> ChannelScope {
        ChannelScope { key, token }
    }

    /// The scope `["**"]` with no token claim: every channel is allowed.
    pub fn unrestricted() -> ChannelScope {
        let all = Pattern::parse("**").map(|p| vec![p]).unwrap_or_default();
        ChannelScope {
            key: all.into(),
            token: None,
        }
    }

    /// The key's patterns.
    pub fn key_patterns(&self) -> &[Pattern] {
        &self.key
    }

    /// The token's `channels` claim, if it had one.
    pub fn token_patterns(&self) -> Option<&[Pattern]> {
        self.token.as_deref()
    }

    /// True when `channel` is inside the scope. No allocation.
    pub fn allows(&self, channel: &str) -> bool {
        self.key.iter().any(|p| p.matches(channel))
            && self
                .token
                .as_ref()
                .is_none_or(|t| t.iter().any(|p| p.matches(channel)))
    }

    /// True when every channel matched by `pattern` is inside the scope (for wildcard
    /// subscriptions). Sound but conservative: the pattern must lie within one single key
    /// pattern and (if there is a token claim) within one single claim entry.
    pub fn allows_pattern(&self, pattern: &Pattern) -> bool {
        self.key.iter().any(|k| pattern_within(pattern, k))
            && self
                .token
                .as_ref()
                .is_none_or(|t| t.iter().any(|c| pattern_within(pattern, c)))
    }
}

/// An authenticated WebSocket peer.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The app (tenant) the credentials belong to.
    pub app: AppId,
    /// Peer id: the JWT `sub`, or a fresh UUID v4 for publishable keys.
    pub peer_id: Arc<str>,
    /// Effective actions: key actions ∩ token `permissions` (default: the key's actions) ∩
    /// [`Actions::CONNECTION`] (never `admin`).
    pub actions: Actions,
    /// Effective channel scope.
    pub scope: ChannelScope,
    /// Token `exp` (unix seconds); `None` for publishable keys.
    pub expires_at: Option<u64>,
    /// Private `metadata` claim as compact JSON (an object); only for `welcome.metadata`.
    pub metadata_json: Option<String>,
    /// Public `peerMetadata` claim as compact JSON (an object).
    pub peer_metadata_json: Option<bytes::Bytes>,
}

/// Why a WebSocket connection was refused; maps to a close code sent before `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Bad, unknown or malformed token or key (close 4001). The text is a short, non-secret reason.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// The token's `exp` is not in the future (close 4002).
    #[error("token expired")]
    Expired,
    /// A token `channels` entry lies outside the key's patterns (close 4003).
    #[error("channels not authorized")]
    ChannelsNotAuthorized,
}

impl AuthError {
    /// The WebSocket close code: [`close::INVALID_TOKEN`], [`close::TOKEN_EXPIRED`] or
    /// [`close::CHANNEL_NOT_AUTHORIZED`].
    pub fn close_code(&self) -> u16 {
        match self {
            AuthError::Invalid(_) => close::INVALID_TOKEN,
            AuthError::Expired => close::TOKEN_EXPIRED,
            AuthError::ChannelsNotAuthorized => close::CHANNEL_NOT_AUTHORIZED,
        }
    }

    /// A short close reason (ASCII, well under the 123-byte close-frame limit).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Invalid(r) => r,
            AuthError::Expired => "token expired",
            AuthError::ChannelsNotAuthorized => "channels not authorized",
        }
    }
}

/// A secret key that authenticated a REST request.
#[derive(Clone, Debug)]
pub struct SecretKeyRef {
    /// The key's app.
    pub app: AppId,
    /// Index of the key within its app's `secret_keys` config list.
    pub key_index: usize,
    /// The key's public id (`sk_id_…`), e.g. to pass to [`Authenticator::mint`].
    pub key_id: String,
    /// The key's actions.
    pub actions: Actions,
    /// The key's channel scope (no token part).
    pub scope: ChannelScope,
}

/// What to put in a minted token. Deserializes from the `POST /v1/tokens` body
/// (`peerId`, `channels`, `permissions`, `expiresInSec` (default 3600), `metadata`, `peerMetadata`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintRequest {
    /// The `sub` claim: 1–128 bytes printable ASCII.
    pub peer_id: String,
    /// The `channels` claim (≤100 patterns, each within the key's patterns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// The `permissions` claim (≤16 action names, each among the key's actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Lifetime in seconds, 1..=86400.
    #[serde(default = "default_expires_in")]
    pub expires_in_sec: u64,
    /// The private `metadata` claim (object, ≤8 KiB serialized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The public `peerMetadata` claim (object, ≤4 KiB serialized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_metadata: Option<serde_json::Value>,
}

fn default_expires_in() -> u64 {
    jwt::DEFAULT_EXPIRES_IN_SEC
}

/// Immutable credential checker shared by all shards (`Send + Sync`).
pub struct Authenticator {
    store: keys::KeyStore,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "apps",
                &self.store.apps.iter().map(|a| &*a.name).collect::<Vec<_>>(),
            )
            .field("secret_keys", &self.store.secret_keys.len())
            .field("publishable_keys", &self.store.publishable_keys.len())
            .finish()
    }
}

/// Longest raw (still percent-encoded) `token`/`key` query value considered.
const MAX_RAW_QUERY_VALUE: usize = 3 * jwt::MAX_TOKEN_LEN;

/// Percent-decodes a query component; `None` if it is not UTF-8.
fn decode_component(s: &str) -> Option<Cow<'_, str>> {
    percent_decode_str(s).decode_utf8().ok()
}

/// Extracts the `token` and `key` parameters from a raw query string.
fn parse_query(query: &str) -> Result<(Option<String>, Option<String>), AuthError> {
    let mut token = None;
    let mut key = None;
    for part in query.split('&') {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let slot = match decode_component(name).as_deref() {
            Some("token") => &mut token,
            Some("key") => &mut key,
            _ => continue,
        };
        if slot.is_some() {
            return Err(AuthError::Invalid("duplicate credential parameter"));
        }
        if value.len() > MAX_RAW_QUERY_VALUE {
            return Err(AuthError::Invalid("credential too long"));
        }
        let value = decode_component(value).ok_or(AuthError::Invalid("malformed query"))?;
        if value.is_empty() {
            return Err(AuthError::Invalid("empty credential"));
        }
        *slot = Some(value.into_owned());
    }
    Ok((token, key))
}

/// Compares `given` with `expected` in time that depends only on `expected.len()`.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u64::from(expected.len() != given.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= u64::from(e ^ given.get(i).copied().unwrap_or(0));
    }
    std::hint::black_box(diff) == 0
}

impl Authenticator {
    /// Validates the config and builds the authenticator. Errors ([`KeyError`]) on: no apps,
    /// duplicate app ids, key ids/secrets/publishable keys without the `sk_id_` / `sk_secret_` /
    /// `pk_live_` prefix (or not printable ASCII, or `:` in a key id), duplicate key ids or
    /// publishable keys across apps, unparsable channel patterns, unknown actions.
    pub fn new(apps: &[keys::AppConfig]) -> Result<Self, KeyError> {
        Ok(Authenticator {
            store: keys::KeyStore::build(apps)?,
        })
    }

    /// Authenticates a WebSocket upgrade. `query` is the raw URL query (after `?`, still
    /// percent-encoded); exactly one of `token=<jwt>` or `key=<pk_live_…>` must be present
    /// (other parameters are ignored). `origin` is the upgrade's `Origin` header.
    pub fn authenticate_ws(
        &self,
        query: &str,
        origin: Option<&str>,
        now_unix: u64,
    ) -> Result<Identity, AuthError> {
        match parse_query(query)? {
            (Some(token), None) => self.verify_token(&token, now_unix),
            (None, Some(key)) => self.authenticate_publishable(&key, origin),
            (Some(_), Some(_)) => Err(AuthError::Invalid("both token and key given")),
            (None, None) => Err(AuthError::Invalid("missing token or key")),
        }
    }

    /// Verifies a JWT (already percent-decoded) exactly as `authenticate_ws` does for `?token=`.
    pub fn verify_token(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        jwt::verify(&self.store, token, now_unix)
    }

    /// Authenticates a publishable key and checks the `Origin` header against `allowed_origins`.
    fn authenticate_publishable(
        &self,
        key: &str,
        origin: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let pk = self
            .store
            .publishable_key(key)
            .ok_or(AuthError::Invalid("unknown key"))?;
        if let Some(allowed) = &pk.allowed_origins {
            let ok = origin.is_some_and(|o| allowed.iter().any(|a| **a == *o));
            if !ok {
                return Err(AuthError::Invalid("origin not allowed"));
            }
        }
        Ok(Identity {
            app: pk.app,
            peer_id: uuid::Uuid::new_v4().to_string().into(),
            actions: pk.actions,
            scope: ChannelScope::new(pk.patterns.clone(), None),
            expires_at: None,
            metadata_json: None,
            peer_metadata_json: None,
        })
    }

    /// Authenticates a REST `Authorization` header value `Bearer sk_id_…:sk_secret_…` (scheme
    /// case-insensitive, surrounding whitespace ignored). The secret is compared in constant
    /// time. `None` for anything invalid, without saying why.
    pub(crate) fn authenticate_secret(&self, authorization: &str) -> Option<SecretKeyRef> {
        let (scheme, credential) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let (id, secret) = credential.trim().split_once(':')?;
        let Some(key) = self.store.secret_key(id) else {
            // Same amount of work as a wrong secret.
            let _ = constant_time_eq(&[0u8; 42], secret.as_bytes());
            return None;
        };
        if !constant_time_eq(&key.secret, secret.as_bytes()) {
            return None;
        }
        Some(SecretKeyRef {
            app: key.app,
            key_index: key.index,
            key_id: key.id.to_string(),
            actions: key.actions,
            scope: ChannelScope::new(key.patterns.clone(), None),
        })
    }

    /// Mints an HS256 JWT signed with secret key `key_id` (header `kid` = `key_id`, claims `sub`,
    /// `iat`, `exp` and the optional ones). Returns `(jwt, expires_at)`.
    ///
    /// Errors ([`jwt::MintError`]) say which REST answer to give: `InvalidRequest` (bad peer
    /// id, lifetime outside 1..=86400, bad pattern or action, `admin` asked for, non-object or
    /// oversized metadata, unknown key id, token over 16 KiB), `ChannelNotAuthorized` (a
    /// channel outside the key's patterns) or `ActionNotPermitted` (a permission the key lacks).
    pub fn mint(
        &self,
        key_id: &str,
        req: &MintRequest,
        now_unix: u64,
    ) -> Result<(String, u64), jwt::MintError> {
        jwt::mint(&self.store, key_id, req, now_unix)
    }

    /// Number of configured apps (`AppId`s are `0..app_count()`).
    pub fn app_count(&self) -> usize {
        self.store.apps.len()
    }

    /// The configured id of `app` (`""` for an out-of-range `AppId`).
    pub(crate) fn app_name(&self, app: AppId) -> &str {
        self.store
            .apps
            .get(usize::from(app.0))
            .map_or("", |a| &a.name)
    }

    /// The app whose configured id is `name`.
    pub fn app_id(&self, name: &str) -> Option<AppId> {
        self.store
            .apps
            .iter()
            .position(|a| *a.name == *name)
            .and_then(|i| u16::try_from(i).ok())
            .map(AppId)
    }

    /// [ext] The history rule of `channel` in `app` (protocol §8.1): the first
    /// `[[apps.history]]` entry with a pattern matching it; `None` when the channel has
    /// no history. Apps without history rules answer with one length check.
    pub fn history_rule(&self, app: AppId, channel: &str) -> Option<HistoryRule> {
        let rules = &self.store.apps.get(usize::from(app.0))?.history;
        rules
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.matches(channel)))
            .map(|(_, rule)| *rule)
    }

    /// [ext] True when `app` has any history rule.
    pub fn has_history(&self, app: AppId) -> bool {
        self.store
            .apps
            .get(usize::from(app.0))
            .is_some_and(|a| !a.history.is_empty())
    }

    /// The app's connection cap (`None` = unlimited, or an out-of-range `AppId`).
    pub(crate) fn app_max_connections(&self, app: AppId) -> Option<u32> {
        self.store
            .apps
            .get(usize::from(app.0))
            .and_then(|a| a.max_connections)
    }

    /// Public ids of the app's secret keys, in config order (e.g. for `ringcast token`).
    pub fn secret_key_ids(&self, app: AppId) -> impl Iterator<Item = &str> + '_ {
        self.store
            .secret_keys
            .iter()
            .filter(move |k| k.app == app)
            .map(|k| &*k.id)
    }
}

#[cfg(test)]
mod tests;
