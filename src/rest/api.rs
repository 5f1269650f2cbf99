//! REST routing, authentication and the endpoints of protocol.md §7.
//!
//! | endpoint | key needs | answer |
//! |---|---|---|
//! | `POST /v1/channels/{channel}/publish` | `publish` + channel in patterns | `{"channel"}` |
//! | `POST /v1/tokens` | (the minted scope must lie within the key's) | `{"token","expiresAt"}` |
//! | `GET /v1/channels/{channel}/peers` | `presence` + channel in patterns | `{"channel","peers"}` |
//! | `DELETE /v1/peers/{peerId}` | `admin` | `{"peerId","closed"}` |
//! | `GET /v1/usage` | `admin` | `{"appId","concurrentNow","peakConcurrent","messagesUsed",…}` |
//! | `GET /healthz`, `GET /metrics` | nothing | `{"status"}`, Prometheus text |
//!
//! Errors are `{"error":"<code>","message":"<text>"}`. Checks run cheapest first: route
//! (404/405), draining (503), key (401), declared body size (413), path parameters (400),
//! permissions (403), then the body is read with a 32 KiB cap (413) and parsed (400).

use std::{
    borrow::Cow,
    future::Future,
    sync::{atomic::Ordering, Arc},
    task::Poll,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    HeaderMap, Method, Request, Response, StatusCode,
};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, value::RawValue, Value};

use super::MAX_BODY;
use crate::{
    auth::{jwt, jwt::MintError, keys::HistoryRule, Actions, MintRequest, SecretKeyRef},
    clock::unix_now,
    cluster::query::{self, Query},
    protocol::{
        parse::{is_valid_data, validate_channel, DEFAULT_HISTORY_LIMIT, MAX_DEPTH},
        scan::exceeds_depth,
        ErrorCode,
    },
    router::{
        fanout, mesh::Source, owner_of, HistoryPublish, HistoryQuery, Publication, PublishAnswer,
        QueryAnswer, ShardId, ShardMsg,
    },
    shard::Broker,
};

/// How long a request waits for the shards' answers before giving up with 503.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `peerMetadata` of a REST publish, compact-serialized (as for tokens).
const MAX_PEER_METADATA: usize = jwt::MAX_PEER_METADATA_LEN;

/// The response type of every endpoint.
pub(crate) type Resp = Response<Full<Bytes>>;

/// An error answer: status, `error` code and human `message`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body over {MAX_BODY} bytes"),
        )
    }

    fn unavailable(message: &str) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal_error", message)
    }

    fn into_response(self) -> Resp {
        let body = json!({"error": self.code, "message": self.message}).to_string();
        let mut r = json_response(self.status, body);
        let h = r.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The body may still be on the wire: do not try to reuse the connection.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        r
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn ok_json(v: Value) -> Resp {
    json_response(StatusCode::OK, v.to_string())
}

/// A matched route; path parameters still percent-encoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `GET /healthz`
    Healthz,
    /// `GET /metrics`
    Metrics,
    /// `POST /v1/channels/{channel}/publish`
    Publish(&'a str),
    /// `GET /v1/channels/{channel}/peers`
    Peers(&'a str),
    /// [ext] `GET /v1/channels/{channel}/history?since=N&limit=L` (protocol §8.1)
    History(&'a str),
    /// `POST /v1/tokens`
    Tokens,
    /// `DELETE /v1/peers/{peerId}`
    Kick(&'a str),
    /// `GET /v1/usage`
    Usage,
}

/// Matches a method and a raw (still percent-encoded) path. A channel may be sent with
/// its `/` encoded (`room%2Fa`) or literal (`room/a`): everything between
/// `/v1/channels/` and the last segment is the channel.
pub(crate) fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ApiError> {
    let (route, allow) = if path == "/healthz" {
        (Route::Healthz, "GET")
    } else if path == "/metrics" {
        (Route::Metrics, "GET")
    } else if path == "/v1/tokens" {
        (Route::Tokens, "POST")
    } else if path == "/v1/usage" {
        (Route::Usage, "GET")
    } else if let Some(peer) = path.strip_prefix("/v1/peers/").filter(|p| !p.is_empty()) {
        (Route::Kick(peer), "DELETE")
    } else if let Some((ch, action)) = path
        .strip_prefix("/v1/channels/")
        .and_then(|rest| rest.rsplit_once('/'))
        .filter(|(ch, _)| !ch.is_empty())
    {
        match action {
            "publish" => (Route::Publish(ch), "POST"),
            "peers" => (Route::Peers(ch), "GET"),
            "history" => (Route::History(ch), "GET"),
            _ => return Err(not_found()),
        }
    } else {
        return Err(not_found());
    };
    if method.as_str() != allow {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {allow} for this path"),
        );
        e.allow = Some(allow);
        return Err(e);
    }
    Ok(route)
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Decodes a percent-encoded path parameter (UTF-8 required); borrowed when nothing is encoded.
fn decode_param<'a>(raw: &'a str, what: &str) -> Result<Cow<'a, str>, ApiError> {
    percent_decode_str(raw).decode_utf8().map_err(|_| {
        ApiError::bad_request(format!("{what} is not valid UTF-8 once percent-decoded"))
    })
}

/// Decodes and validates a channel path parameter.
fn channel_param(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    let ch = decode_param(raw, "channel")?;
    match validate_channel(&ch) {
        Ok(()) => Ok(ch),
        Err(ErrorCode::ChannelReserved) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "channel_reserved",
            "channel names starting with _metered/, _internal/ or _system/ are reserved",
        )),
        Err(_) => Err(ApiError::bad_request(
            "invalid channel name (1-256 bytes of UTF-8, no control characters)",
        )),
    }
}

fn forbidden_action(action: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "action_not_permitted",
        format!("this key does not have the {action} action"),
    )
}

fn forbidden_channel() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "channel_not_authorized",
        "the channel is outside this key's channel patterns",
    )
}

/// `Some(raw)` even for `null`, so that a missing `data` and `"data":null` differ. The raw
/// text is borrowed from the body.
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// An optional string borrowed from the body unless it has escapes.
fn cow_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct S<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<S<'de>>::deserialize(d).map(|o| o.map(|s| s.0))
}

/// `POST /v1/channels/{channel}/publish` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublishBody<'a> {
    /// Any JSON, `null` included; required.
    #[serde(default, borrow, deserialize_with = "present_raw")]
    data: Option<&'a RawValue>,
    /// The `from` of the delivered `message` (default `"system"`).
    #[serde(default, borrow, deserialize_with = "cow_str")]
    from: Option<Cow<'a, str>>,
    /// Sent as `fromMetadata` to subscribers that asked for sender metadata.
    #[serde(default)]
    peer_metadata: Option<Value>,
}

/// Parses a JSON object body; 400 `invalid_request` for anything else.
fn parse_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if exceeds_depth(body, MAX_DEPTH) {
        return Err(ApiError::bad_request(format!(
            "JSON nested deeper than {MAX_DEPTH} levels"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Why a body could not be read.
enum BodyError {
    /// Over [`MAX_BODY`] bytes.
    TooLarge,
    /// The connection failed or the body was malformed (e.g. bad chunking).
    Read,
}

/// The whole body, refused as soon as it passes [`MAX_BODY`] bytes. One chunk (the usual
/// case: a small body read with its head) is returned as is, without a copy.
async fn read_capped(mut body: Incoming) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Read)?.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        if first.is_none() && joined.is_empty() {
            first = Some(data);
        } else {
            if let Some(f) = first.take() {
                joined.extend_from_slice(&f);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// The REST API state: the broker's shared half.
#[derive(Debug)]
pub(crate) struct Api {
    /// Shared broker state (mesh, authenticator, counters, draining flag).
    pub(crate) shared: Arc<Broker>,
}

impl Api {
    /// The API over `shared`.
    pub(crate) fn new(shared: Arc<Broker>) -> Api {
        Api { shared }
    }

    /// Answers one request. Never panics on input.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Resp {
        match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Resp, ApiError> {
        let (head, body) = req.into_parts();
        let route = route(&head.method, head.uri.path())?;
        match route {
            Route::Metrics => return Ok(self.metrics()),
            Route::Healthz => return Ok(self.healthz()),
            _ => {}
        }
        if self.draining() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let key = self.authenticate(&head.headers)?;
        match route {
            Route::Publish(ch) => self.publish(&key, ch, &head.headers, body).await,
            Route::Peers(ch) => self.peers(&key, ch).await,
            Route::History(ch) => self.history(&key, ch, head.uri.query()).await,
            Route::Tokens => self.tokens(&key, &head.headers, body).await,
            Route::Kick(peer) => self.kick(&key, peer).await,
            Route::Usage => Ok(self.usage(&key).await),
            Route::Metrics | Route::Healthz => Err(not_found()),
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<SecretKeyRef, ApiError> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.shared.auth.authenticate_secret(v))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid secret key is required: Authorization: Bearer sk_id_…:sk_secret_…",
                )
            })
    }

    fn healthz(&self) -> Resp {
        if self.draining() {
            let mut r = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "draining"}).to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        } else {
            match &self.shared.cluster {
                None => ok_json(json!({"status": "ok", "shards": self.shared.mesh.shards()})),
                // [ext] protocol §9: the node still serves its own connections while NATS
                // is down, so the status stays ok; the link's state is reported beside it.
                Some(l) => ok_json(json!({
                    "status": "ok",
                    "shards": self.shared.mesh.shards(),
                    "cluster": {
                        "node": l.node_id,
                        "nats": if l.up.load(Ordering::Relaxed) { "connected" } else { "disconnected" },
                        // Nodes alive, this one included (heard from within node_timeout_ms).
                        "nodes": l.live_nodes.load(Ordering::Relaxed) + 1,
                    },
                })),
            }
        }
    }

    fn metrics(&self) -> Resp {
        let mesh = &self.shared.mesh;
        let mut text = self.shared.metrics.render(
            |i| mesh.depth(ShardId(i as u16)) as u64,
            |i| mesh.data_bytes(ShardId(i as u16)) as u64,
            self.draining(),
        );
        if let Some(l) = &self.shared.cluster {
            text.push_str(&l.render_metrics());
        }
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    /// Reads the body: 413 when `Content-Length` announces more than [`MAX_BODY`] (nothing
    /// is read), or when a body without one grows past it (reading stops there), 408 after
    /// [`BODY_READ_TIMEOUT`].
    async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
        let mut read = std::pin::pin!(read_capped(body));
        // Usually the body came with the head: then no timer is set up at all.
        let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        let r = match first {
            Poll::Ready(r) => r,
            Poll::Pending => match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "invalid_request",
                        "the request body did not arrive in time",
                    ))
                }
            },
        };
        r.map_err(|e| match e {
            BodyError::TooLarge => ApiError::too_large(),
            BodyError::Read => ApiError::bad_request("the request body could not be read"),
        })
    }

    /// 413 before anything else is done when the declared length is over the cap.
    fn check_declared_length(headers: &HeaderMap) -> Result<(), ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(n) if n > MAX_BODY as u64 => Err(ApiError::too_large()),
            _ => Ok(()),
        }
    }

    async fn publish(
        &self,
        key: &SecretKeyRef,
        raw_channel: &str,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Resp, ApiError> {
        Self::check_declared_length(headers)?;
        let channel = channel_param(raw_channel)?;
        if !key.actions.contains(Actions::PUBLISH) {
            return Err(forbidden_action("publish"));
        }
        if !key.scope.allows(&channel) {
            return Err(forbidden_channel());
        }
        let body = Self::read_body(body).await?;
        let b: PublishBody = parse_object(&body)?;
        let data = b
            .data
            .ok_or_else(|| ApiError::bad_request("data is required (null is allowed)"))?;
        // serde_json lets a lone surrogate escape ("\ud800") through a RawValue; `data` is
        // spliced into subscribers' frames, so it gets the WebSocket path's strict check.
        if !is_valid_data(data.get().as_bytes()) {
            return Err(ApiError::bad_request(
                "data is not strictly valid JSON (e.g. a lone surrogate escape)",
            ));
        }
        let from = b.from.unwrap_or(Cow::Borrowed("system"));
        if !jwt::is_valid_peer_id(&from) {
            return Err(ApiError::bad_request(
                "from must be 1-128 bytes of printable ASCII",
            ));
        }
        let meta = match b.peer_metadata {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => {
                let s = v.to_string();
                if s.len() > MAX_PEER_METADATA {
                    return Err(ApiError::bad_request(format!(
                        "peerMetadata is over {MAX_PEER_METADATA} bytes serialized"
                    )));
                }
                Some(s)
            }
            Some(_) => return Err(ApiError::bad_request("peerMetadata must be an object")),
        };
        let data = data.get().as_bytes();
        if let Some(rule) = self.shared.auth.history_rule(key.app, &channel) {
            return self
                .publish_history(key, &channel, rule, &from, data, meta)
                .await;
        }
        // Built once (only if every shard has room) and handed to every shard; each is
        // woken after this poll of the connection (`rest::pay_wakes`), once per batch.
        let published = fanout::publish(
            &self.shared.mesh,
            Source::External,
            || {
                let meta = meta.as_deref().map(str::as_bytes);
                Publication::new(key.app, &channel, &from, data, meta, None)
            },
            |_| {}, // no shard here: every shard delivers from its queue
            super::owe_wake,
        );
        let Ok(p) = published else {
            // Backpressure: a shard's queue is over `max_cross_shard_bytes`; nothing is
            // queued anywhere, and the client is told when to retry (Retry-After: 1).
            return Err(ApiError::unavailable(
                "the broker is busy (a shard's queue is full); retry later",
            ));
        };
        // [ext] To the other nodes (protocol §9).
        if let Some(link) = &self.shared.cluster {
            link.publish(&p);
        }
        if let Some(c) = self
            .shared
            .metrics
            .rest
            .app_publishes
            .get(key.app.0 as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        #[derive(Serialize)]
        struct Published<'a> {
            channel: &'a str,
        }
        let answer = serde_json::to_vec(&Published { channel: &channel })
            .map_err(|_| ApiError::unavailable("the answer could not be encoded"))?;
        Ok(json_response(StatusCode::OK, Bytes::from(answer)))
    }

    /// [ext] Publish on a history channel (protocol §8.1): the channel's owner shard
    /// numbers, retains and fans out the publication, and answers its offset.
    async fn publish_history(
        &self,
        key: &SecretKeyRef,
        channel: &str,
        rule: HistoryRule,
        from: &str,
        data: &[u8],
        meta: Option<String>,
    ) -> Result<Resp, ApiError> {
        let busy =
            || ApiError::unavailable("the broker is busy (a shard's queue is full); retry later");
        let mesh = &self.shared.mesh;
        let owner = owner_of(key.app, channel, mesh.shards());
        if !mesh.has_room(owner) {
            return Err(busy());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        mesh.push(
            Source::External,
            owner,
            ShardMsg::HistoryPublish(Box::new(HistoryPublish {
                app: key.app,
                channel: Arc::from(channel),
                rule,
                from: Arc::from(from),
                data: Bytes::copy_from_slice(data),
                metadata: meta.map(Bytes::from),
                origin: None,
                answer: PublishAnswer::Rest(tx),
            })),
        );
        let offset = match tokio::time::timeout(SHARD_REPLY_TIMEOUT, rx).await {
            Ok(Ok(Ok(offset))) => offset,
            Ok(Ok(Err(fanout::Busy))) => return Err(busy()),
            _ => {
                return Err(ApiError::unavailable(
                    "the channel's shard did not answer in time",
                ))
            }
        };
        if let Some(c) = self
            .shared
            .metrics
            .rest
            .app_publishes
            .get(key.app.0 as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ok_json(json!({"channel": channel, "offset": offset})))
    }

    /// [ext] `GET /v1/channels/{channel}/history?since=N&limit=L` (protocol §8.1).
    async fn history(
        &self,
        key: &SecretKeyRef,
        raw_channel: &str,
        query: Option<&str>,
    ) -> Result<Resp, ApiError> {
        let channel = channel_param(raw_channel)?;
        if !key.actions.contains(Actions::SUBSCRIBE) {
            return Err(forbidden_action("subscribe"));
        }
        if !key.scope.allows(&channel) {
            return Err(forbidden_channel());
        }
        let (mut since, mut limit) = (None, DEFAULT_HISTORY_LIMIT);
        for (k, v) in query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
        {
            let number = |what: &str| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("{what} must be a non-negative integer"))
                })
            };
            match k {
                "since" => since = Some(number("since")?),
                "limit" => match number("limit")? {
                    n @ 1..=1000 => limit = n as u16,
                    _ => {
                        return Err(ApiError::bad_request(
                            "limit must be an integer from 1 to 1000",
                        ))
                    }
                },
                _ => {} // unknown parameters are ignored, like unknown JSON fields
            }
        }
        let Some(rule) = self.shared.auth.history_rule(key.app, &channel) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "history_not_enabled",
                "this channel has no history",
            ));
        };
        let mesh = &self.shared.mesh;
        let owner = owner_of(key.app, &channel, mesh.shards());
        let (tx, rx) = tokio::sync::oneshot::channel();
        mesh.push(
            Source::External,
            owner,
            ShardMsg::HistoryQuery(Box::new(HistoryQuery {
                app: key.app,
                channel: Arc::from(&*channel),
                rule,
                since_offset: since,
                limit,
                answer: QueryAnswer::Rest(tx),
            })),
        );
        match tokio::time::timeout(SHARD_REPLY_TIMEOUT, rx).await {
            Ok(Ok(body)) => Ok(json_response(StatusCode::OK, Bytes::from(body))),
            _ => Err(ApiError::unavailable(
                "the channel's shard did not answer in time",
            )),
        }
    }

    async fn tokens(
        &self,
        key: &SecretKeyRef,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Resp, ApiError> {
        Self::check_declared_length(headers)?;
        let body = Self::read_body(body).await?;
        let mint: MintRequest = parse_object(&body)?;
        match self.shared.auth.mint(&key.key_id, &mint, unix_now()) {
            Ok((token, expires_at)) => {
                Ok(ok_json(json!({"token": token, "expiresAt": expires_at})))
            }
            Err(e) => {
                let status = match e {
                    MintError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                    MintError::ChannelNotAuthorized { .. }
                    | MintError::ActionNotPermitted { .. } => StatusCode::FORBIDDEN,
                    MintError::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                Err(ApiError::new(status, e.code(), e.to_string()))
            }
        }
    }

    async fn peers(&self, key: &SecretKeyRef, raw_channel: &str) -> Result<Resp, ApiError> {
        let channel = channel_param(raw_channel)?;
        if !key.actions.contains(Actions::PRESENCE) {
            return Err(forbidden_action("presence"));
        }
        if !key.scope.allows(&channel) {
            return Err(forbidden_channel());
        }
        let ch: Arc<str> = Arc::from(&*channel);
        let Some(mut roster) = self.shared.roster(key.app, &ch).await else {
            return Err(ApiError::unavailable(
                "the channel's shard did not answer in time",
            ));
        };
        // [ext] protocol §9: every other node's members too (this node knows them only
        // while it has subscribers on the channel).
        let cluster = match &self.shared.cluster {
            Some(link) => {
                let g = link.ask(Query::Peers(key.app, ch)).await;
                let answered = g.answers.len();
                let mut seen: std::collections::HashSet<Arc<str>> =
                    roster.iter().map(|(p, _)| p.clone()).collect();
                for members in g.answers.into_iter().filter_map(query::decode_peers) {
                    for m in members {
                        if seen.insert(m.0.clone()) {
                            roster.push(m);
                        }
                    }
                }
                Some(cluster_field(g.asked, answered))
            }
            None => None,
        };
        roster.sort_by(|a, b| a.0.cmp(&b.0));
        let peers: Vec<Value> = roster
            .into_iter()
            .map(|(peer, meta)| {
                let meta = meta.and_then(|m| serde_json::from_slice::<Value>(&m).ok());
                match meta {
                    Some(m) => json!({"peerId": &*peer, "metadata": m}),
                    None => json!({"peerId": &*peer}),
                }
            })
            .collect();
        let mut body = json!({"channel": channel, "peers": peers});
        if let Some(c) = cluster {
            body["cluster"] = c;
        }
        Ok(ok_json(body))
    }

    async fn kick(&self, key: &SecretKeyRef, raw_peer: &str) -> Result<Resp, ApiError> {
        let peer = decode_param(raw_peer, "peerId")?;
        if !jwt::is_valid_peer_id(&peer) {
            return Err(ApiError::bad_request(
                "peerId must be 1-128 bytes of printable ASCII",
            ));
        }
        if !key.actions.contains(Actions::ADMIN) {
            return Err(forbidden_action("admin"));
        }
        let peer_arc: Arc<str> = Arc::from(&*peer);
        let Some(mut closed) = self.shared.kick(key.app, &peer_arc).await else {
            return Err(ApiError::unavailable("a shard did not answer in time"));
        };
        let mut body = json!({"peerId": peer});
        // [ext] protocol §9: the peer's connections on every node.
        if let Some(link) = &self.shared.cluster {
            let g = link.ask(Query::Kick(key.app, peer_arc)).await;
            let answered = g.answers.len();
            closed += g
                .answers
                .into_iter()
                .filter_map(query::decode_kick)
                .sum::<u64>();
            body["cluster"] = cluster_field(g.asked, answered);
        }
        body["closed"] = closed.into();
        Ok(ok_json(body))
    }

    async fn usage(&self, key: &SecretKeyRef) -> Resp {
        if !key.actions.contains(Actions::ADMIN) {
            return forbidden_action("admin").into_response();
        }
        let mut u = self.shared.usage(key.app);
        let mut cluster = None;
        // [ext] protocol §9: summed over every node. The peak is the sum of each node's
        // peak: an upper bound of the cluster's (nodes need not peak at the same moment).
        if let Some(link) = &self.shared.cluster {
            let g = link.ask(Query::Usage(key.app)).await;
            let answered = g.answers.len();
            for o in g.answers.into_iter().filter_map(query::decode_usage) {
                u.concurrent += o.concurrent;
                u.peak += o.peak;
                u.messages += o.messages;
                u.deliveries += o.deliveries;
                u.rest_publishes += o.rest_publishes;
            }
            cluster = Some(cluster_field(g.asked, answered));
        }
        let mut body = json!({
            "appId": self.shared.auth.app_name(key.app),
            "concurrentNow": u.concurrent,
            "peakConcurrent": u.peak,
            "messagesUsed": u.messages,
            "messagesDelivered": u.deliveries,
            "restPublishes": u.rest_publishes,
            "maxConnections": self.shared.auth.app_max_connections(key.app),
        });
        if let Some(c) = cluster {
            body["cluster"] = c;
        }
        ok_json(body)
    }
}

/// [ext] The `cluster` field of a cluster-wide REST answer: the nodes asked (this one
/// included) and those that answered in time (a node missing from `answered` is left out of
/// the figures).
fn cluster_field(asked_others: usize, answered_others: usize) -> Value {
    json!({"nodes": asked_others + 1, "answered": answered_others + 1})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> Result<Route<'_>, u16> {
        route(&m, p).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn routes() {
        assert_eq!(
            r(Method::POST, "/v1/channels/room%2Fa/publish"),
            Ok(Route::Publish("room%2Fa"))
        );
        assert_eq!(
            r(Method::POST, "/v1/channels/room/a/publish"),
            Ok(Route::Publish("room/a"))
        );
        assert_eq!(
            r(Method::GET, "/v1/channels/x/publish/peers"),
            Ok(Route::Peers("x/publish"))
        );
        assert_eq!(
            r(Method::DELETE, "/v1/peers/alice"),
            Ok(Route::Kick("alice"))
        );
        assert_eq!(r(Method::POST, "/v1/tokens"), Ok(Route::Tokens));
        assert_eq!(r(Method::GET, "/v1/usage"), Ok(Route::Usage));
        assert_eq!(r(Method::GET, "/healthz"), Ok(Route::Healthz));
        assert_eq!(r(Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(r(Method::GET, "/v1/tokens"), Err(405));
        assert_eq!(r(Method::GET, "/v1/channels//peers"), Err(404));
        assert_eq!(r(Method::GET, "/v1/channels/a/other"), Err(404));
        assert_eq!(r(Method::GET, "/v1/channels/a"), Err(404));
        assert_eq!(r(Method::DELETE, "/v1/peers/"), Err(404));
        assert_eq!(r(Method::GET, "/"), Err(404));
        assert_eq!(r(Method::GET, "/v2/usage"), Err(404));
    }

    #[test]
    fn channel_params_decode_and_validate() {
        assert_eq!(channel_param("room%2Fa%20b").unwrap(), "room/a b");
        assert_eq!(channel_param("%F0%9F%8E%89").unwrap(), "🎉");
        assert_eq!(channel_param("%FF").unwrap_err().code, "invalid_request");
        assert_eq!(channel_param("a%00b").unwrap_err().code, "invalid_request");
        assert_eq!(
            channel_param("_system%2Fx").unwrap_err().code,
            "channel_reserved"
        );
        assert_eq!(
            channel_param(&"a".repeat(257)).unwrap_err().code,
            "invalid_request"
        );
    }

    #[test]
    fn publish_body_distinguishes_null_from_missing() {
        let b: PublishBody = parse_object(br#"{"data":null}"#).unwrap();
        assert_eq!(b.data.unwrap().get(), "null");
        let b: PublishBody = parse_object(br#"{"from":"x"}"#).unwrap();
        assert!(b.data.is_none());
        assert!(matches!(b.from, Some(Cow::Borrowed("x"))));
        let b: PublishBody = parse_object(br#"{"data":[1, 2],"from":"a\"b\u0041"}"#).unwrap();
        assert_eq!(b.data.unwrap().get(), "[1, 2]");
        assert_eq!(b.from.as_deref(), Some("a\"bA"));
        let b: PublishBody = parse_object(br#"{"data":1,"from":null}"#).unwrap();
        assert!(b.from.is_none());
        assert!(parse_object::<PublishBody>(b"[1]").is_err());
        assert!(parse_object::<PublishBody>(b"").is_err());
        assert!(parse_object::<PublishBody>(br#"{"data":1,"peerMetadata":"#).is_err());
        let deep = |n: usize| {
            format!(
                r#"{{"data":{}{}, "s":"[[[\"{{"}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(parse_object::<PublishBody>(deep(MAX_DEPTH - 1).as_bytes()).is_ok());
        assert!(parse_object::<PublishBody>(deep(MAX_DEPTH).as_bytes()).is_err());
    }
}
