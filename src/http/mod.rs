//! The HTTP surface: routes, authentication and the one scope check every
//! query and stream goes through, REST handlers (thin: they ask the node),
//! `/metrics`, `/healthz` and the embedded dashboards.

mod assets;
pub mod auth;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Role;
use crate::engine::desk::ShopFilter;
use crate::engine::window::Window;
use crate::node::{Node, NodeError};
use crate::protocol::{AgentId, ShopId, TeamId};
use crate::publish::stream::Scope;
use auth::{Principal, Tokens, role_name};

/// Shared state of every handler.
#[derive(Debug)]
pub struct App {
    /// The node.
    pub node: Node,
    /// Known tokens.
    pub tokens: Tokens,
    /// No tokens configured: loopback only, everyone is `local` (admin).
    pub open: bool,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Origins allowed for browser WebSockets besides the server's own.
    pub allowed_origins: Vec<String>,
    /// Process start.
    pub started: Instant,
}

/// An error answer: a status and `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn forbidden(what: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, what)
    }
    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// WebSocket read and write buffers start this small (they grow for big
/// frames); the 128 KiB default made an idle socket cost ~136 KiB.
const SOCKET_BUFFER: usize = 8 << 10;
type AppState = State<Arc<App>>;

/// The router of the whole server.
pub fn router(app: Arc<App>) -> Router {
    let max_body = app.node.config().ingest.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/events", post(post_events).layer(DefaultBodyLimit::max(max_body)))
        .route("/v1/ingest", get(ws_ingest))
        .route("/v1/stream", get(ws_stream))
        .route("/v1/whoami", get(whoami))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{agent}/stats", get(agent_stats))
        .route("/v1/agents/{agent}/detail", get(agent_detail))
        .route("/v1/agents/{agent}/standing", get(agent_standing))
        .route("/v1/teams/{team}/stats", get(team_stats))
        .route("/v1/shops/{shop}/stats", get(shop_stats))
        .route("/v1/desk/stats", get(desk_stats))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/{id}/ack", post(ack_alert))
        .route("/", get(assets::index))
        .route("/me", get(assets::me))
        .route("/assets/{*path}", get(assets::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Unknown paths answer in JSON, like every other error.
async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint `{}` (see /openapi.json)", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}

// ---- authentication and scope ----

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "deskpulse_token")
        .map(|(_, v)| v.to_owned())
}

/// A token offered in `Sec-WebSocket-Protocol` (a browser cannot set
/// `Authorization` on a WebSocket): an entry `bearer.<token>`, the pair
/// `bearer, <token>`, or the token as the only entry besides `deskpulse`.
/// Returns the entry to echo back (a browser requires one of its own) and
/// the token.
fn protocol_token(headers: &HeaderMap) -> Option<(String, String)> {
    let offered: Vec<&str> = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(found) = offered
        .iter()
        .find_map(|p| p.strip_prefix("bearer.").map(|t| ((*p).to_owned(), t.to_owned())))
    {
        return Some(found);
    }
    if let Some(i) = offered.iter().position(|p| p.eq_ignore_ascii_case("bearer")) {
        return offered.get(i + 1).map(|t| (offered[i].to_owned(), (*t).to_owned()));
    }
    match offered.iter().filter(|p| **p != "deskpulse").collect::<Vec<_>>()[..] {
        [token] => Some(((*token).to_owned(), (*token).to_owned())),
        _ => None,
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Who is calling: from the `Authorization` header, the `deskpulse_token`
/// cookie, or (WebSockets) a subprotocol (`protocol_token`). Argon2-hashed
/// tokens are verified off the executor ([`Tokens::authenticate`]).
pub async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Principal> {
    if app.open {
        return Ok(Principal::open());
    }
    let token = bearer(headers)
        .or_else(|| cookie_token(headers))
        .or_else(|| protocol_token(headers).map(|(_, t)| t))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing token: send Authorization: Bearer <token>",
            )
        })?;
    app.tokens
        .authenticate(&token)
        .await
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
}

async fn reader(app: &App, headers: &HeaderMap) -> Result<(Principal, Scope)> {
    let p = authenticate(app, headers).await?;
    if p.role == Role::Ingest {
        return Err(ApiError::forbidden("an ingest token may only send events"));
    }
    let scope = Scope::of(&p, &app.node.config().settings(app.node.clock()));
    Ok((p, scope))
}

/// Browser WebSockets and POSTs must come from our own page (or an
/// allowed origin); a request without `Origin` is not from a browser page.
fn check_origin(app: &App, headers: &HeaderMap) -> Result<()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(()); // not a browser
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if origin_host == host || app.allowed_origins.iter().any(|o| o == origin) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("origin {origin} is not allowed")))
    }
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
    shop: Option<String>,
}

fn window(q: &Option<String>) -> Result<Window> {
    match q {
        None => Ok(Window::Today),
        Some(s) => Window::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown window `{s}` (today, 1h, 15m, 5m)"),
            )
        }),
    }
}

/// The shops of `agent` the caller may see (`None` = all), or 403/404.
async fn agent_scope(app: &App, p: &Principal, scope: &Scope, agent: &AgentId) -> Result<ShopFilter> {
    let agent2 = agent.clone();
    let (known, shops) = app
        .node
        .query(move |d| (d.knows_agent(&agent2), d.shops_of(&agent2)))
        .await?;
    match scope.shop_filter(agent) {
        None => {
            if !known && p.role == Role::Admin {
                return Err(ApiError::not_found(format!("unknown agent `{agent}`")));
            }
            Ok(None)
        }
        Some(allowed) if shops.iter().any(|s| allowed.contains(s)) => Ok(Some(allowed)),
        Some(_) => Err(ApiError::forbidden(format!("agent `{agent}` is outside your scope"))),
    }
}

// ---- ingest ----

async fn post_events(
    State(app): AppState,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    check_origin(&app, &headers)?;
    let p = authenticate(&app, &headers).await?;
    if auth_write(&p).is_none() {
        return Err(ApiError::forbidden(format!(
            "role `{}` may not send events",
            role_name(p.role)
        )));
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        // Read as events, compressed bytes would be rejected line by line
        // as bad UTF-8: say what is wrong instead.
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding `{}` is not supported; send the body uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            ),
        ));
    }
    let body = body.map_err(|e| {
        let status = e.status();
        let limit = app.node.config().ingest.max_body_bytes;
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, format!("body too large (limit {limit} bytes); no event taken"))
        } else {
            ApiError::new(status, format!("cannot read the body: {e}"))
        }
    })?;
    let ack = crate::ingest::process(&app.node, &p, &body, usize::MAX).await;
    let status = if ack.error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(ack)).into_response())
}

fn auth_write(p: &Principal) -> Option<()> {
    crate::ingest::writable_shops(p).map(|_| ())
}

async fn ws_ingest(State(app): AppState, headers: HeaderMap, ws: WebSocketUpgrade) -> Result<Response> {
    let p = authenticate(&app, &headers).await?;
    check_origin(&app, &headers)?;
    if auth_write(&p).is_none() {
        return Err(ApiError::forbidden(format!(
            "role `{}` may not send events",
            role_name(p.role)
        )));
    }
    let node = app.node.clone();
    let shutdown = app.shutdown.clone();
    let ws = with_protocols(ws, &headers)
        .max_message_size(16 << 20)
        .max_frame_size(16 << 20)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER);
    Ok(ws.on_upgrade(move |socket| async move {
        node.counters().ws_ingest.fetch_add(1, Ordering::Relaxed);
        crate::ingest::serve(socket, node.clone(), p, shutdown).await;
        node.counters().ws_ingest.fetch_sub(1, Ordering::Relaxed);
    }))
}

fn with_protocols(ws: WebSocketUpgrade, headers: &HeaderMap) -> WebSocketUpgrade {
    match protocol_token(headers) {
        Some((offered, _)) => ws.protocols(["deskpulse".to_owned(), offered]),
        None => ws.protocols(["deskpulse"]),
    }
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    interval_ms: Option<u64>,
}

async fn ws_stream(
    State(app): AppState,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    let (_, scope) = reader(&app, &headers).await?;
    check_origin(&app, &headers)?;
    let base = app.node.config().server.push_interval_ms;
    // The engine publishes once per push interval already; a subscriber
    // only coalesces further when it asked for a longer interval.
    let asked = q.interval_ms.unwrap_or(base).clamp(100, 10_000);
    let interval = Duration::from_millis(if asked <= base { 0 } else { asked });
    let hub = app.node.hub().clone();
    let node = app.node.clone();
    let shutdown = app.shutdown.clone();
    let ws = with_protocols(ws, &headers)
        .max_message_size(64 << 10)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER);
    Ok(ws.on_upgrade(move |socket| async move {
        node.counters().ws_stream.fetch_add(1, Ordering::Relaxed);
        let end = crate::publish::stream::serve(socket, hub, scope, interval, shutdown).await;
        if end == crate::publish::stream::End::Stalled {
            node.counters().stream_lagged.fetch_add(1, Ordering::Relaxed);
        }
        node.counters().ws_stream.fetch_sub(1, Ordering::Relaxed);
    }))
}

// ---- queries ----

async fn whoami(State(app): AppState, headers: HeaderMap) -> Result<Response> {
    let p = authenticate(&app, &headers).await?;
    Ok(axum::Json(json!({
        "role": role_name(p.role),
        "name": p.name,
        "agent": p.agent,
        "teams": p.teams,
        "shops": p.shops,
        "open": app.open,
    }))
    .into_response())
}

async fn agent_stats(
    State(app): AppState,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Query(q): Query<WindowQuery>,
) -> Result<Response> {
    let (p, scope) = reader(&app, &headers).await?;
    let w = window(&q.window)?;
    let agent = AgentId::new(&agent);
    let filter = agent_scope(&app, &p, &scope, &agent).await?;
    let shop = q.shop.as_deref().map(ShopId::new);
    if let (Some(s), Some(f)) = (&shop, &filter)
        && !f.contains(s)
    {
        return Err(ApiError::forbidden(format!("shop `{s}` is outside your scope")));
    }
    // A shop no event has named is most likely a typo: saying so beats a
    // slice of zeros that looks like an idle agent.
    let asked = q.shop.unwrap_or_default();
    let stats = app
        .node
        .query(move |d| {
            let known = shop.as_ref().is_none_or(|s| d.has_shop(s));
            known.then(|| d.agent_stats(&agent, w, shop.as_ref(), &filter))
        })
        .await?;
    match stats {
        Some(stats) => Ok(axum::Json(stats).into_response()),
        None => Err(ApiError::not_found(format!("unknown shop `{asked}`"))),
    }
}

async fn list_agents(State(app): AppState, headers: HeaderMap, Query(q): Query<WindowQuery>) -> Result<Response> {
    let (_, scope) = reader(&app, &headers).await?;
    let w = window(&q.window)?;
    let out = app
        .node
        .query(move |d| {
            let agents: Vec<_> = d
                .agent_ids()
                .into_iter()
                .filter_map(|a| match scope.shop_filter(&a) {
                    None => Some(d.agent_stats(&a, w, None, &None)),
                    Some(allowed) => d
                        .shops_of(&a)
                        .iter()
                        .any(|s| allowed.contains(s))
                        .then(|| d.agent_stats(&a, w, None, &Some(allowed))),
                })
                .collect();
            json!({ "now": d.now(), "window": w, "agents": agents })
        })
        .await?;
    Ok(axum::Json(out).into_response())
}

async fn agent_detail(State(app): AppState, headers: HeaderMap, Path(agent): Path<String>) -> Result<Response> {
    let (p, scope) = reader(&app, &headers).await?;
    let agent = AgentId::new(&agent);
    let filter = agent_scope(&app, &p, &scope, &agent).await?;
    let out = app
        .node
        .query(move |d| {
            let stats = d.agent_stats(&agent, Window::Today, None, &filter);
            json!({
                "agent": agent,
                "now": d.now(),
                // What the figures cover, as on the stats endpoint.
                "shop": stats.shop,
                "shops": stats.shops,
                "live": stats.live,
                "today": stats.metrics,
                "histogram": d.histogram(&agent, &filter),
                "minutes": d.minutes(&agent, &filter),
                "waits": d.open_waits(&agent, &filter),
            })
        })
        .await?;
    Ok(axum::Json(out).into_response())
}

async fn agent_standing(
    State(app): AppState,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Query(q): Query<WindowQuery>,
) -> Result<Response> {
    let (p, scope) = reader(&app, &headers).await?;
    let w = window(&q.window)?;
    let agent = AgentId::new(&agent);
    if agent_scope(&app, &p, &scope, &agent).await?.is_some() {
        // The standing compares whole agents of a team; a caller who sees
        // only some shops' slice of this agent may not see that.
        return Err(ApiError::forbidden(format!(
            "the standing of `{agent}` compares whole agents; your scope holds a slice of them"
        )));
    }
    let out = app
        .node
        .query(move |d| {
            let team = d.settings().teams_of(&agent).into_iter().next();
            let members: Vec<AgentId> = team
                .as_ref()
                .and_then(|t| d.settings().teams.get(t).cloned())
                .unwrap_or_default();
            let avg = |a: &AgentId| d.agent_stats(a, w, None, &None).metrics.avg_response_ms;
            let mine = avg(&agent);
            let others: Vec<f64> = members.iter().filter(|m| **m != agent).filter_map(avg).collect();
            // Higher is better: the share of teammates with a slower average.
            let (percentile, rank) = match mine {
                Some(m) if !others.is_empty() => {
                    let slower = others.iter().filter(|o| **o > m).count();
                    let faster = others.iter().filter(|o| **o < m).count();
                    (Some(100.0 * slower as f64 / others.len() as f64), Some(faster + 1))
                }
                Some(_) => (Some(100.0), Some(1)),
                None => (None, None),
            };
            json!({
                "agent": agent, "team": team, "window": w,
                "percentile": percentile, "rank": rank, "team_size": members.len(),
            })
        })
        .await?;
    Ok(axum::Json(out).into_response())
}

async fn team_stats(
    State(app): AppState,
    headers: HeaderMap,
    Path(team): Path<String>,
    Query(q): Query<WindowQuery>,
) -> Result<Response> {
    let (_, scope) = reader(&app, &headers).await?;
    let w = window(&q.window)?;
    let team = TeamId::new(&team);
    if !scope.sees_team(&team) {
        return Err(ApiError::forbidden(format!("team `{team}` is outside your scope")));
    }
    let t = team.clone();
    match app.node.query(move |d| d.team_stats(&t, w)).await? {
        Some(stats) => Ok(axum::Json(stats).into_response()),
        None => Err(ApiError::not_found(format!("unknown team `{team}`"))),
    }
}

async fn shop_stats(
    State(app): AppState,
    headers: HeaderMap,
    Path(shop): Path<String>,
    Query(q): Query<WindowQuery>,
) -> Result<Response> {
    let (_, scope) = reader(&app, &headers).await?;
    let w = window(&q.window)?;
    let shop = ShopId::new(&shop);
    if !scope.sees_shop(&shop) {
        return Err(ApiError::forbidden(format!("shop `{shop}` is outside your scope")));
    }
    let s = shop.clone();
    match app.node.query(move |d| d.shop_stats(&s, w)).await? {
        Some(stats) => Ok(axum::Json(stats).into_response()),
        None => Err(ApiError::not_found(format!("unknown shop `{shop}`"))),
    }
}

async fn desk_stats(State(app): AppState, headers: HeaderMap, Query(q): Query<WindowQuery>) -> Result<Response> {
    let (_, scope) = reader(&app, &headers).await?;
    let w = window(&q.window)?;
    if !scope.sees_desk() {
        return Err(ApiError::forbidden("the desk total is for administrators"));
    }
    let stats = app.node.query(move |d| d.desk_stats(w)).await?;
    Ok(axum::Json(stats).into_response())
}

#[derive(Debug, Deserialize)]
struct AlertQuery {
    state: Option<String>,
    agent: Option<String>,
    shop: Option<String>,
}

async fn list_alerts(State(app): AppState, headers: HeaderMap, Query(q): Query<AlertQuery>) -> Result<Response> {
    let (p, scope) = reader(&app, &headers).await?;
    let all = match q.state.as_deref() {
        None | Some("active") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown state `{other}` (active, all)"),
            ));
        }
    };
    let agent = q.agent.map(|a| AgentId::new(&a));
    let shop = q.shop.map(|s| ShopId::new(&s));
    // A filter outside the caller's scope is refused, not answered empty.
    if let Some(a) = &agent {
        agent_scope(&app, &p, &scope, a).await?;
    }
    if let Some(s) = &shop
        && !scope.may_see_alerts_of(s)
    {
        return Err(ApiError::forbidden(format!("shop `{s}` is outside your scope")));
    }
    let alerts = app
        .node
        .query(move |d| {
            let v = if all { d.all_alerts() } else { d.active_alerts() };
            v.into_iter()
                .filter(|a| scope.sees_alert(a))
                .filter(|a| agent.as_ref().is_none_or(|x| *x == a.agent))
                .filter(|a| shop.as_ref().is_none_or(|x| *x == a.shop))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(axum::Json(json!({ "alerts": alerts })).into_response())
}

async fn ack_alert(State(app): AppState, headers: HeaderMap, Path(id): Path<String>) -> Result<Response> {
    // A browser's cookie rides along on a cross-site POST: only our own
    // pages (or an allowed origin) may change state with it.
    check_origin(&app, &headers)?;
    let (p, scope) = reader(&app, &headers).await?;
    if p.role == Role::Agent {
        return Err(ApiError::forbidden("agents cannot acknowledge alerts"));
    }
    let lookup = id.clone();
    let alert = app.node.query(move |d| d.alert(&lookup)).await?;
    match alert {
        None => Err(ApiError::not_found(format!("unknown alert `{id}`"))),
        Some(a) if !scope.sees_alert(&a) => Err(ApiError::forbidden("this alert is outside your scope")),
        Some(_) => match app.node.ack_alert(&id, &p.name).await? {
            Some(a) => Ok(axum::Json(a).into_response()),
            None => Err(ApiError::not_found(format!("unknown alert `{id}`"))),
        },
    }
}

// ---- operations ----

async fn healthz(State(app): AppState) -> Response {
    let ok = app.node.storage_ok();
    let c = app.node.counters();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "storage_ok": ok,
        "recovered_records": c.recovered_records.load(Ordering::Relaxed),
        "uptime_s": app.started.elapsed().as_secs(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
        .into_response()
}

async fn metrics(State(app): AppState) -> Result<Response> {
    let c = app.node.counters();
    let census = app
        .node
        .query(|d| {
            let parts = d.parts();
            let agents: BTreeSet<AgentId> = parts.iter().flat_map(|p| p.agent_ids()).collect();
            let census: Vec<_> = parts.iter().map(|p| p.census()).collect();
            let alerts = d.active_alerts();
            (agents.len(), census, alerts)
        })
        .await?;
    let (agents, census, alerts) = census;
    let sum = |f: fn(&crate::engine::Census) -> usize| census.iter().map(f).sum::<usize>();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "deskpulse_events_total",
        "counter",
        "Events by outcome.",
        vec![
            ("{outcome=\"accepted\"}".into(), get(&c.events_accepted)),
            ("{outcome=\"duplicate\"}".into(), get(&c.events_duplicate)),
            ("{outcome=\"rejected\"}".into(), get(&c.events_rejected)),
        ],
    );
    metric(
        "deskpulse_ingest_batches_total",
        "counter",
        "Ingest frames and bodies processed.",
        vec![(String::new(), get(&c.frames))],
    );
    metric(
        "deskpulse_engine_backlog_events",
        "gauge",
        &format!(
            "Events acknowledged but not yet applied by the engine (acks wait once it reaches {}).",
            crate::node::ENGINE_BACKLOG_EVENTS
        ),
        vec![(String::new(), c.engine_backlog.events() as f64)],
    );
    metric(
        "deskpulse_log_commits_total",
        "counter",
        "Group commits (one fsync each).",
        vec![(String::new(), get(&c.commits))],
    );
    metric(
        "deskpulse_log_commit_seconds_total",
        "counter",
        "Time spent writing and fsyncing the log.",
        vec![(String::new(), get(&c.commit_micros_total) / 1e6)],
    );
    metric(
        "deskpulse_log_records_total",
        "counter",
        "Event records written to the log.",
        vec![(String::new(), get(&c.records))],
    );
    metric(
        "deskpulse_websockets",
        "gauge",
        "Open WebSockets by kind.",
        vec![
            ("{kind=\"ingest\"}".into(), get(&c.ws_ingest)),
            ("{kind=\"stream\"}".into(), get(&c.ws_stream)),
        ],
    );
    metric(
        "deskpulse_stream_dropped_total",
        "counter",
        "Subscribers dropped for not reading.",
        vec![(String::new(), get(&c.stream_lagged))],
    );
    metric(
        "deskpulse_agents",
        "gauge",
        "Agents known.",
        vec![(String::new(), agents as f64)],
    );
    metric(
        "deskpulse_shops",
        "gauge",
        "Shops known.",
        vec![(String::new(), sum(|c| c.shops) as f64)],
    );
    metric(
        "deskpulse_open_conversations",
        "gauge",
        "Conversations open.",
        vec![(String::new(), sum(|c| c.conversations) as f64)],
    );
    metric(
        "deskpulse_dedup_ids",
        "gauge",
        "Event ids remembered for duplicate detection.",
        vec![(String::new(), sum(|c| c.dedup_ids) as f64)],
    );
    let count = |rule: &str, sev: &str| {
        alerts
            .iter()
            .filter(|a| a.rule.as_str() == rule && format!("{:?}", a.severity).to_lowercase() == sev)
            .count() as f64
    };
    metric(
        "deskpulse_alerts_active",
        "gauge",
        "Active alerts by rule and severity.",
        ["slow_average", "customer_waiting"]
            .iter()
            .flat_map(|r| ["warning", "critical"].map(|s| (format!("{{rule=\"{r}\",severity=\"{s}\"}}"), count(r, s))))
            .collect(),
    );
    metric(
        "deskpulse_recovered_records",
        "gauge",
        "Log records replayed at start.",
        vec![(String::new(), get(&c.recovered_records))],
    );
    metric(
        "deskpulse_recovery_seconds",
        "gauge",
        "Time to recover at start.",
        vec![(String::new(), get(&c.recovery_millis) / 1e3)],
    );
    metric(
        "deskpulse_up",
        "gauge",
        "1 while the log can write.",
        vec![(String::new(), if app.node.storage_ok() { 1.0 } else { 0.0 })],
    );
    if let Some(kib) = crate::allocator::proc_kib("/proc/self/status", "VmRSS") {
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            vec![(String::new(), (kib << 10) as f64)],
        );
    }
    metric(
        "deskpulse_reserved_memory_bytes",
        "gauge",
        "Memory faulted in at start for the engine to grow into (server.reserve_memory_mib).",
        vec![(String::new(), crate::allocator::reserved() as f64)],
    );
    histogram(
        &mut out,
        "deskpulse_ingest_ack_seconds",
        "Time from a batch's arrival to its ack (parsed, durable, applied).",
        &c.ingest_latency,
    );
    histogram(
        &mut out,
        "deskpulse_log_commit_duration_seconds",
        "Time of each group commit: the log's write and fsync.",
        &c.commit_latency,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Appends `hist` to `out` as a Prometheus histogram in seconds.
fn histogram(out: &mut String, name: &str, help: &str, hist: &crate::node::LatencyHistogram) {
    let (counts, sum_us) = hist.cumulative();
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
    let bounds = crate::node::LatencyHistogram::BOUNDS_US
        .iter()
        .map(|b| format!("{}", *b as f64 / 1e6));
    for (le, n) in bounds.chain(std::iter::once("+Inf".to_string())).zip(&counts) {
        out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {n}\n"));
    }
    out.push_str(&format!("{name}_sum {}\n", sum_us as f64 / 1e6));
    out.push_str(&format!("{name}_count {}\n", counts.last().copied().unwrap_or(0)));
}
