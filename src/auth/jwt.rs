//! JWT verification (HS256 only, `kid`-selected secret key) and minting, with claim validation.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use super::glob::{pattern_within, Pattern};
use super::keys::{KeyStore, SecretKey};
use super::{Actions, AuthError, ChannelScope, Identity, MintRequest};

/// Longest accepted token, in bytes (longer → 4001).
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest peer id (`sub`), in bytes.
pub(crate) const MAX_PEER_ID_LEN: usize = 128;
/// Most entries in the `channels` claim.
pub(crate) const MAX_CHANNELS_CLAIM: usize = 100;
/// Most entries in the `permissions` claim.
pub(crate) const MAX_PERMISSIONS_CLAIM: usize = 16;
/// Largest `metadata` claim, compact-serialized, in bytes.
pub(crate) const MAX_METADATA_LEN: usize = 8 * 1024;
/// Largest `peerMetadata` claim, compact-serialized, in bytes.
pub(crate) const MAX_PEER_METADATA_LEN: usize = 4 * 1024;
/// Default token lifetime for minting (`POST /v1/tokens` without `expiresInSec`).
pub(crate) const DEFAULT_EXPIRES_IN_SEC: u64 = 3600;
/// Longest token lifetime [`super::Authenticator::mint`] accepts.
pub(crate) const MAX_EXPIRES_IN_SEC: u64 = 86_400;

/// True when `s` is a valid peer id: 1–128 bytes, each printable ASCII (0x21–0x7E).
pub(crate) fn is_valid_peer_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_PEER_ID_LEN && s.bytes().all(|b| (0x21..=0x7E).contains(&b))
}

/// Furthest in the future a token's `exp` may lie: 10 years (3650 days). A later `exp` (or
/// one no clock can represent, e.g. 1e19 or 2^64) is refused as invalid (4001) rather than
/// honoured: no legitimate token lives that long, and deadlines that far out overflow
/// `SystemTime`/`Instant` arithmetic.
pub(crate) const MAX_EXP_HORIZON_SEC: u64 = 3650 * 86_400;

/// Why [`super::Authenticator::mint`] refused; each variant is one REST answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// 400 `invalid_request`: the request itself is wrong.
    #[error("{0}")]
    InvalidRequest(String),
    /// 403 `channel_not_authorized`: a channel outside the key's patterns.
    #[error("channel {channel:?} is outside the key's channel patterns")]
    ChannelNotAuthorized {
        /// The first requested channel (pattern) outside the key's patterns.
        channel: String,
    },
    /// 403 `action_not_permitted`: a permission the key lacks.
    #[error("the key only allows [{allowed}]")]
    ActionNotPermitted {
        /// What the key allows on a connection (its actions without `admin`).
        allowed: Actions,
    },
    /// The signature could not be made (500 `internal_error`; not expected to happen).
    #[error("signing failed: {0}")]
    Signing(String),
}

impl MintError {
    /// The REST error code: `invalid_request`, `channel_not_authorized`,
    /// `action_not_permitted` or `internal_error`.
    pub fn code(&self) -> &'static str {
        match self {
            MintError::InvalidRequest(_) => "invalid_request",
            MintError::ChannelNotAuthorized { .. } => "channel_not_authorized",
            MintError::ActionNotPermitted { .. } => "action_not_permitted",
            MintError::Signing(_) => "internal_error",
        }
    }
}

/// Invalid-token shorthand.
const fn invalid(reason: &'static str) -> AuthError {
    AuthError::Invalid(reason)
}

/// Reads a NumericDate claim (`exp`/`nbf`): a non-negative JSON number (fractions truncated).
/// `Ok(None)` when absent or null.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, ()> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    // `as` saturates; the value is finite and non-negative here.
                    Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                    _ => Err(()),
                }
            }
        }
        Some(_) => Err(()),
    }
}

/// Reads an optional array-of-strings claim with at most `max` entries. `Ok(None)` when
/// absent or null.
fn string_list<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Option<Vec<&'a str>>, ()> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= max => items
            .iter()
            .map(|v| v.as_str().ok_or(()))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(()),
    }
}

/// Compact-serializes an optional object claim, enforcing the size cap. `Ok(None)` when absent
/// or null; `Err` when not an object or too large.
fn object_json(value: Option<&Value>, max: usize) -> Result<Option<String>, &'static str> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            let s = serde_json::to_string(v).map_err(|_| "not serializable")?;
            if s.len() > max {
                Err("too large")
            } else {
                Ok(Some(s))
            }
        }
        Some(_) => Err("not an object"),
    }
}

/// True when every pattern lies inside one of the key's patterns.
fn within_key(key: &SecretKey, patterns: &[Pattern]) -> bool {
    patterns
        .iter()
        .all(|p| key.patterns.iter().any(|k| pattern_within(p, k)))
}

/// Verifies a token and builds the peer's identity.
///
/// Order: length cap → header (`alg` must be HS256) → `kid` lookup → signature → `exp`
/// (missing/malformed → Invalid, `now >= exp` → Expired, more than [`MAX_EXP_HORIZON_SEC`]
/// ahead → Invalid) → `nbf` (`nbf > now` → Invalid) →
/// `sub`, `permissions`, `channels`, `metadata`, `peerMetadata` formats (→ Invalid) →
/// `channels` within the key's patterns (→ ChannelsNotAuthorized).
pub(crate) fn verify(store: &KeyStore, token: &str, now: u64) -> Result<Identity, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid("token too long"));
    }
    let header = decode_header(token).map_err(|_| invalid("malformed token"))?;
    if header.alg != Algorithm::HS256 {
        return Err(invalid("unsupported alg"));
    }
    let kid = header.kid.as_deref().ok_or(invalid("missing kid"))?;
    let key = store.secret_key(kid).ok_or(invalid("unknown kid"))?;

    // Time claims are checked below against the caller's clock, so the library's are off.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        decode::<Map<String, Value>>(token, &key.decoding, &validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => invalid("bad signature"),
                _ => invalid("malformed token"),
            }
        })?;
    let claims = data.claims;

    let exp = numeric_date(&claims, "exp")
        .map_err(|()| invalid("malformed exp"))?
        .ok_or(invalid("missing exp"))?;
    if now >= exp {
        return Err(AuthError::Expired);
    }
    if exp - now > MAX_EXP_HORIZON_SEC {
        return Err(invalid("exp too far in the future"));
    }
    let nbf = numeric_date(&claims, "nbf").map_err(|()| invalid("malformed nbf"))?;
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(invalid("token not yet valid"));
    }

    let sub = match claims.get("sub") {
        Some(Value::String(s)) if is_valid_peer_id(s) => s.as_str(),
        Some(_) => return Err(invalid("invalid sub")),
        None => return Err(invalid("missing sub")),
    };

    // `admin` never reaches a connection: it is dropped from the key's actions and from a
    // `permissions` claim (which only a hand-made token can carry; `mint` refuses it).
    let actions = match string_list(&claims, "permissions", MAX_PERMISSIONS_CLAIM)
        .map_err(|()| invalid("invalid permissions"))?
    {
        None => key.actions,
        Some(names) => Actions::parse_list(&names)
            .map_err(|_| invalid("invalid permissions"))?
            .intersection(key.actions),
    }
    .intersection(Actions::CONNECTION);

    let channels: Option<Arc<[Pattern]>> =
        match string_list(&claims, "channels", MAX_CHANNELS_CLAIM)
            .map_err(|()| invalid("invalid channels"))?
        {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|c| Pattern::parse(c))
                    .collect::<Result<Arc<[Pattern]>, _>>()
                    .map_err(|_| invalid("invalid channels"))?,
            ),
        };

    let metadata_json = object_json(claims.get("metadata"), MAX_METADATA_LEN)
        .map_err(|_| invalid("invalid metadata"))?;
    let peer_metadata_json = object_json(claims.get("peerMetadata"), MAX_PEER_METADATA_LEN)
        .map_err(|_| invalid("invalid peerMetadata"))?
        .map(bytes::Bytes::from);

    if let Some(list) = &channels {
        if !within_key(key, list) {
            return Err(AuthError::ChannelsNotAuthorized);
        }
    }

    Ok(Identity {
        app: key.app,
        peer_id: Arc::from(sub),
        actions,
        scope: ChannelScope::new(key.patterns.clone(), channels),
        expires_at: Some(exp),
        metadata_json,
        peer_metadata_json,
    })
}

/// Claims written by [`mint`].
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Value>,
    #[serde(rename = "peerMetadata", skip_serializing_if = "Option::is_none")]
    peer_metadata: Option<&'a Value>,
}

/// Validates a mint request against the key and signs the token. See
/// [`super::Authenticator::mint`] for the errors.
pub(crate) fn mint(
    store: &KeyStore,
    key_id: &str,
    req: &MintRequest,
    now: u64,
) -> Result<(String, u64), MintError> {
    use MintError::{ActionNotPermitted, ChannelNotAuthorized, InvalidRequest};
    let key = store
        .secret_key(key_id)
        .ok_or_else(|| InvalidRequest("unknown key id".to_owned()))?;
    if !is_valid_peer_id(&req.peer_id) {
        return Err(InvalidRequest(
            "peerId must be 1-128 bytes of printable ASCII".to_owned(),
        ));
    }
    if req.expires_in_sec == 0 || req.expires_in_sec > MAX_EXPIRES_IN_SEC {
        return Err(InvalidRequest(format!(
            "expiresInSec must be 1..={MAX_EXPIRES_IN_SEC}"
        )));
    }
    if let Some(channels) = &req.channels {
        if channels.len() > MAX_CHANNELS_CLAIM {
            return Err(InvalidRequest(format!(
                "at most {MAX_CHANNELS_CLAIM} channels"
            )));
        }
        let patterns = channels
            .iter()
            .map(|c| Pattern::parse(c).map_err(|e| InvalidRequest(format!("channel {c:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = patterns
            .iter()
            .find(|p| !key.patterns.iter().any(|k| pattern_within(p, k)))
        {
            return Err(ChannelNotAuthorized {
                channel: bad.as_str().to_owned(),
            });
        }
    }
    let permissions = match &req.permissions {
        None => None,
        Some(list) => {
            if list.len() > MAX_PERMISSIONS_CLAIM {
                return Err(InvalidRequest(format!(
                    "at most {MAX_PERMISSIONS_CLAIM} permissions"
                )));
            }
            let actions = Actions::parse_list(list).map_err(|e| InvalidRequest(e.to_string()))?;
            if actions.contains(Actions::ADMIN) {
                return Err(InvalidRequest(
                    "admin is a key action for the REST API, not a token permission".to_owned(),
                ));
            }
            if !key.actions.contains(actions) {
                return Err(ActionNotPermitted {
                    allowed: key.actions.intersection(Actions::CONNECTION),
                });
            }
            Some(actions.names())
        }
    };
    object_json(req.metadata.as_ref(), MAX_METADATA_LEN)
        .map_err(|e| InvalidRequest(format!("metadata {e} (object, max 8 KiB)")))?;
    object_json(req.peer_metadata.as_ref(), MAX_PEER_METADATA_LEN)
        .map_err(|e| InvalidRequest(format!("peerMetadata {e} (object, max 4 KiB)")))?;

    let exp = now.saturating_add(req.expires_in_sec);
    let claims = MintClaims {
        sub: &req.peer_id,
        iat: now,
        exp,
        channels: req.channels.as_deref(),
        permissions,
        metadata: req.metadata.as_ref().filter(|v| !v.is_null()),
        peer_metadata: req.peer_metadata.as_ref().filter(|v| !v.is_null()),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key_id.to_owned());
    let jwt =
        encode(&header, &claims, &key.encoding).map_err(|e| MintError::Signing(e.to_string()))?;
    if jwt.len() > MAX_TOKEN_LEN {
        return Err(InvalidRequest(format!(
            "token would exceed {MAX_TOKEN_LEN} bytes"
        )));
    }
    Ok((jwt, exp))
}
