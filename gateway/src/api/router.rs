//! Routing and request handling: every request is parsed and checked here
//! (path ids, query parameters, content types, sizes) before the service
//! sees typed values.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use konvert_envelope::model::{AuthorityId, Id, Timestamp};
use serde::Serialize;
use tokio::sync::watch;

use super::problem::{Problem, ProblemType, PROBLEM_CONTENT_TYPE};
use super::types::{
    Acknowledged, Caller, Cursor, Direction, HealthStatus, MessageState, Page, ReceiptFilter, ReceiptState,
};
use super::{ApiLimits, ApiService, Download, UploadBody};

/// Response body: small JSON documents or a stream.
pub(crate) type ApiBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// One route: its path template and methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Path template; `{name}` is a path parameter.
    pub path: &'static str,
    /// Allowed methods.
    pub methods: &'static [&'static str],
}

/// Every route of the API. `docs/api/openapi.yaml` documents each (checked by a test).
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        path: "/v1/messages",
        methods: &["POST"],
    },
    RouteSpec {
        path: "/v1/messages/{id}",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/uploads",
        methods: &["POST"],
    },
    RouteSpec {
        path: "/v1/receipts",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/receipts/{id}",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/receipts/{id}/raw",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/inbox",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/inbox/{id}",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/inbox/{id}/attachments/{n}",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/inbox/{id}/ack",
        methods: &["POST"],
    },
    RouteSpec {
        path: "/v1/cases",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/cases/{id}",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/peers",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/health",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/status",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/audit",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/audit/verify",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/messages/{id}/story",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/retention",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/cases/{id}/purge",
        methods: &["POST"],
    },
    RouteSpec {
        path: "/v1/cases/{id}/close",
        methods: &["POST"],
    },
    RouteSpec {
        path: "/v1/directory",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/v1/directory/changes",
        methods: &["POST"],
    },
];

/// Media type of an exported receipt (a tagged COSE_Sign1, RFC 9052).
pub(crate) const COSE_SIGN1_CONTENT_TYPE: &str = "application/cose; cose-type=\"cose-sign1\"";

/// Default `limit` of lists.
const DEFAULT_LIMIT: u32 = 100;

/// What the handlers share.
pub(crate) struct Ctx<S> {
    pub service: Arc<S>,
    pub limits: ApiLimits,
}

impl<S> std::fmt::Debug for Ctx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Finds the route of a path: its index in [`ROUTES`] and the path parameters.
fn match_route(path: &str) -> Option<(usize, Vec<String>)> {
    let segments: Vec<&str> = path.split('/').collect();
    'routes: for (i, r) in ROUTES.iter().enumerate() {
        let template: Vec<&str> = r.path.split('/').collect();
        if template.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        for (t, s) in template.iter().zip(&segments) {
            if t.starts_with('{') {
                if s.is_empty() {
                    continue 'routes;
                }
                params.push(percent_decode(s).unwrap_or_else(|| (*s).to_owned()));
            } else if t != s {
                continue 'routes;
            }
        }
        return Some((i, params));
    }
    None
}

/// Handles one request of a connection whose caller has been checked (`allowed`).
pub(crate) async fn handle<S: ApiService>(
    ctx: Arc<Ctx<S>>,
    caller: Caller,
    allowed: bool,
    stop: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let mut response = if allowed {
        match route(&ctx, caller, stop, req).await {
            Ok(r) => r,
            Err(p) => problem_response(p, &path),
        }
    } else {
        problem_response(
            Problem::new(
                ProblemType::UnauthorizedCaller,
                "this process's user and groups are not allowed to use the socket",
            ),
            &path,
        )
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::debug!(
        uid = caller.uid,
        pid = caller.pid,
        method = %method,
        status = response.status().as_u16(),
        "api request"
    );
    response
}

async fn route<S: ApiService>(
    ctx: &Ctx<S>,
    caller: Caller,
    mut stop: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, Problem> {
    let Some((index, params)) = match_route(req.uri().path()) else {
        return Err(Problem::not_found("route"));
    };
    let spec = ROUTES[index];
    if !spec.methods.contains(&req.method().as_str()) {
        let allow = spec.methods.join(", ");
        let mut r = problem_response(
            Problem::new(
                ProblemType::MethodNotAllowed,
                format!("{} allows {allow}", spec.path),
            ),
            req.uri().path(),
        );
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(r);
    }
    let query = req.uri().query().map(str::to_owned);
    let q = query.as_deref();
    let svc = &ctx.service;
    let limits = &ctx.limits;
    match (spec.path, req.method()) {
        ("/v1/messages", &Method::POST) => {
            no_query(q)?;
            let request = read_json(req, limits.max_json_body).await?;
            let submitted = svc.submit(caller, request).await?;
            let mut r = json_response(StatusCode::ACCEPTED, &submitted);
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/messages/{}", submitted.id)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        ("/v1/messages/{id}", _) => {
            let id = parse_id("id", &params[0])?;
            let wait = wait_param(&ctx.limits, q)?;
            let status = if wait == 0 {
                svc.status(caller, id).await?
            } else {
                let timeout = Duration::from_secs(u64::from(wait));
                let waiting = svc.status_wait(caller, id, timeout);
                // As for the inbox: bounded here too, and shutdown ends the
                // wait at once with the status as it is.
                tokio::select! {
                    r = tokio::time::timeout(timeout + Duration::from_secs(2), waiting) => match r {
                        Ok(r) => r?,
                        Err(_) => svc.status(caller, id).await?,
                    },
                    () = super::server::stopped(&mut stop) => svc.status(caller, id).await?,
                }
            };
            Ok(json_response(StatusCode::OK, &status))
        }
        ("/v1/uploads", _) => {
            no_query(q)?;
            upload(ctx, caller, req).await
        }
        ("/v1/receipts", _) => {
            let filter = receipt_filter(q, limits)?;
            let page = svc.receipts(caller, filter).await?;
            Ok(json_response(StatusCode::OK, &page))
        }
        ("/v1/receipts/{id}", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            Ok(json_response(StatusCode::OK, &svc.receipt(caller, id).await?))
        }
        ("/v1/receipts/{id}/raw", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            let bytes = svc.receipt_raw(caller, id).await?;
            let mut r = Response::new(full(bytes));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(COSE_SIGN1_CONTENT_TYPE),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"receipt-{id}.cose\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            Ok(r)
        }
        ("/v1/inbox", _) => inbox(ctx, caller, stop, q).await,
        ("/v1/inbox/{id}", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            Ok(json_response(StatusCode::OK, &svc.inbox_get(caller, id).await?))
        }
        ("/v1/inbox/{id}/attachments/{n}", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            let n = parse_u32("n", &params[1], 0, u32::MAX)?;
            Ok(download_response(svc.inbox_attachment(caller, id, n).await?))
        }
        ("/v1/inbox/{id}/ack", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            svc.inbox_ack(caller, id).await?;
            Ok(json_response(
                StatusCode::OK,
                &Acknowledged {
                    id,
                    state: MessageState::Acknowledged,
                },
            ))
        }
        ("/v1/cases", _) => {
            let filter = case_filter(q, limits)?;
            let items = svc.cases(caller, filter).await?;
            Ok(json_response(StatusCode::OK, &Page { items, next: None }))
        }
        ("/v1/cases/{id}", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            Ok(json_response(StatusCode::OK, &svc.case(caller, id).await?))
        }
        ("/v1/peers", _) => {
            no_query(q)?;
            let items = svc.peers(caller).await?;
            Ok(json_response(StatusCode::OK, &Page { items, next: None }))
        }
        ("/v1/health", _) => {
            no_query(q)?;
            let health = svc.health(caller).await?;
            let status = if health.status == HealthStatus::Unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &health))
        }
        ("/v1/status", _) => {
            no_query(q)?;
            Ok(json_response(StatusCode::OK, &svc.node_status(caller).await?))
        }
        ("/v1/audit", _) => {
            let params = Query::parse(q, &["from", "limit"])?;
            let from = match params.get("from") {
                Some(s) => parse_u64("from", s)?,
                None => 0,
            };
            let limit = list_limit(&params, limits)?;
            Ok(json_response(
                StatusCode::OK,
                &svc.audit(caller, from, limit).await?,
            ))
        }
        ("/v1/audit/verify", _) => {
            no_query(q)?;
            Ok(json_response(StatusCode::OK, &svc.audit_verify(caller).await?))
        }
        ("/v1/messages/{id}/story", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            Ok(json_response(StatusCode::OK, &svc.story(caller, id).await?))
        }
        ("/v1/retention", _) => {
            let params = Query::parse(q, &["by", "events", "ids", "bucket"])?;
            let by_day = match params.get("by") {
                None | Some("hour") => false,
                Some("day") => true,
                Some(_) => return Err(Problem::bad_param("by", "invalid_value", "expected hour or day")),
            };
            let events = match params.get("events") {
                Some(s) => parse_u32("events", s, 0, limits.max_list_limit)?,
                None => DEFAULT_LIMIT.min(limits.max_list_limit),
            };
            let ids = match params.get("ids") {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(Problem::bad_param(
                        "ids",
                        "invalid_value",
                        "expected true or false",
                    ))
                }
            };
            let bucket = match params.get("bucket") {
                None => None,
                Some(s) => Some(s.parse::<Timestamp>().map_err(|_| {
                    Problem::bad_param(
                        "bucket",
                        "invalid_value",
                        "expected an RFC 3339 time, e.g. 2026-11-22T10:00:00Z",
                    )
                })?),
            };
            let q = super::ops::RetentionQuery {
                by_day,
                events,
                ids,
                bucket,
            };
            Ok(json_response(StatusCode::OK, &svc.retention(caller, q).await?))
        }
        ("/v1/cases/{id}/purge", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            Ok(json_response(StatusCode::OK, &svc.purge_case(caller, id).await?))
        }
        ("/v1/cases/{id}/close", _) => {
            no_query(q)?;
            let id = parse_id("id", &params[0])?;
            Ok(json_response(StatusCode::OK, &svc.close_case(caller, id).await?))
        }
        ("/v1/directory", _) => {
            no_query(q)?;
            Ok(json_response(StatusCode::OK, &svc.directory(caller).await?))
        }
        ("/v1/directory/changes", _) => {
            no_query(q)?;
            let request = read_json(req, limits.max_json_body).await?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &svc.directory_change(caller, request).await?,
            ))
        }
        _ => Err(Problem::not_found("route")),
    }
}

fn page_next<T>(items: &[T], limit: u32, key: impl Fn(&T) -> String) -> Option<String> {
    if items.len() >= limit as usize {
        items.last().map(key)
    } else {
        None
    }
}

async fn inbox<S: ApiService>(
    ctx: &Ctx<S>,
    caller: Caller,
    mut stop: watch::Receiver<bool>,
    q: Option<&str>,
) -> Result<Response<ApiBody>, Problem> {
    let params = Query::parse(q, &["after", "limit", "wait"])?;
    let after = params
        .get("after")
        .map(|s| {
            s.parse::<Cursor>()
                .map_err(|e| Problem::bad_param("after", "invalid_format", e.to_string()))
        })
        .transpose()?;
    let limit = list_limit(&params, &ctx.limits)?;
    let wait = wait_value(&params, &ctx.limits)?;
    let svc = &ctx.service;
    let items = if wait == 0 {
        svc.inbox(caller, after, limit).await?
    } else {
        let timeout = Duration::from_secs(u64::from(wait));
        let waiting = svc.inbox_wait(caller, after, limit, timeout);
        // The service is trusted to keep to the timeout; this bounds it anyway,
        // and shutdown ends every long poll at once with an empty list.
        tokio::select! {
            r = tokio::time::timeout(timeout + Duration::from_secs(2), waiting) => r.unwrap_or(Ok(Vec::new()))?,
            () = super::server::stopped(&mut stop) => Vec::new(),
        }
    };
    let next = page_next(&items, limit, |i| i.cursor.to_string());
    Ok(json_response(StatusCode::OK, &Page { items, next }))
}

/// The `wait` parameter in seconds (0 when absent; at most the configured
/// longest wait).
fn wait_value(params: &Query, limits: &ApiLimits) -> Result<u32, Problem> {
    let max_wait = limits.max_wait.as_secs().min(u64::from(u32::MAX)) as u32;
    match params.get("wait") {
        Some(s) => parse_u32("wait", s, 0, max_wait),
        None => Ok(0),
    }
}

/// A query of `wait` alone (anything else is refused).
fn wait_param(limits: &ApiLimits, q: Option<&str>) -> Result<u32, Problem> {
    wait_value(&Query::parse(q, &["wait"])?, limits)
}

fn receipt_filter(q: Option<&str>, limits: &ApiLimits) -> Result<ReceiptFilter, Problem> {
    let params = Query::parse(
        q,
        &["peer", "direction", "state", "since", "until", "limit", "after"],
    )?;
    let peer = params
        .get("peer")
        .map(|s| AuthorityId::new(s).map_err(|e| Problem::bad_param("peer", "invalid_format", e.reason)))
        .transpose()?;
    let state = params
        .get("state")
        .map(|s| {
            s.parse::<ReceiptState>()
                .map_err(|()| Problem::bad_param("state", "invalid_value", "expected accepted or rejected"))
        })
        .transpose()?;
    let since = params.get("since").map(|s| parse_time("since", s)).transpose()?;
    let until = params.get("until").map(|s| parse_time("until", s)).transpose()?;
    if let (Some(a), Some(b)) = (since, until) {
        if a > b {
            return Err(Problem::bad_param("until", "date_order", "until is before since"));
        }
    }
    let direction = params
        .get("direction")
        .map(|s| match s {
            "outbound" => Ok(Direction::Outbound),
            "inbound" => Ok(Direction::Inbound),
            _ => Err(Problem::bad_param(
                "direction",
                "invalid_value",
                "expected outbound or inbound",
            )),
        })
        .transpose()?;
    let limit = list_limit(&params, limits)?;
    let after = params
        .get("after")
        .map(|s| {
            s.parse::<Cursor>()
                .map_err(|e| Problem::bad_param("after", "invalid_format", e.to_string()))
        })
        .transpose()?;
    Ok(ReceiptFilter {
        peer,
        direction,
        state,
        since,
        until,
        limit,
        after,
    })
}

/// `overdue=true` or `due_within=7d` (a duration), and `limit`.
fn case_filter(q: Option<&str>, limits: &ApiLimits) -> Result<super::cases::CaseFilter, Problem> {
    use super::cases::{CaseFilter, CaseSelection};
    let params = Query::parse(q, &["overdue", "due_within", "limit"])?;
    let overdue = match params.get("overdue") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(Problem::bad_param(
                "overdue",
                "invalid_value",
                "expected true or false",
            ))
        }
    };
    let due = params
        .get("due_within")
        .map(|s| {
            crate::config::parse_span(s)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .ok_or_else(|| {
                    Problem::bad_param(
                        "due_within",
                        "invalid_format",
                        "expected a duration such as 7d or 12h",
                    )
                })
        })
        .transpose()?;
    let selection = match (overdue, due) {
        (true, Some(_)) => {
            return Err(Problem::bad_param(
                "due_within",
                "invalid_value",
                "give overdue=true or due_within, not both",
            ))
        }
        (true, None) => CaseSelection::Overdue,
        (false, Some(s)) => CaseSelection::DueWithin(s),
        (false, None) => CaseSelection::All,
    };
    Ok(CaseFilter {
        selection,
        limit: list_limit(&params, limits)?,
    })
}

fn list_limit(params: &Query, limits: &ApiLimits) -> Result<u32, Problem> {
    match params.get("limit") {
        Some(s) => parse_u32("limit", s, 1, limits.max_list_limit),
        None => Ok(DEFAULT_LIMIT.min(limits.max_list_limit)),
    }
}

async fn upload<S: ApiService>(
    ctx: &Ctx<S>,
    caller: Caller,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, Problem> {
    let media_type = upload_media_type(req.headers())?;
    let max = ctx.limits.max_upload;
    let length = content_length(req.headers())?;
    if length.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let body = UploadBody::new(req.into_body(), max, length);
    let exceeded = body.exceeded_flag();
    let result = ctx.service.upload(caller, media_type, body).await;
    if exceeded.load(Ordering::SeqCst) {
        return Err(too_large(max));
    }
    Ok(json_response(StatusCode::CREATED, &result?))
}

fn too_large(max: u64) -> Problem {
    Problem::new(
        ProblemType::PayloadTooLarge,
        format!("the body is larger than the limit of {max} bytes"),
    )
    .with_error("", "too_large", format!("at most {max} bytes"))
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Problem::bad_param("content-length", "invalid_format", "not a number"))
        })
        .transpose()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `type/subtype` of a `Content-Type`, lowercase, without parameters.
fn media_type_essence(headers: &HeaderMap) -> Result<(String, String), Problem> {
    let unsupported = |why: &str| {
        Problem::new(ProblemType::UnsupportedMediaType, why.to_owned()).with_error(
            "content-type",
            "unsupported_media_type",
            why.to_owned(),
        )
    };
    let value = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| unsupported("Content-Type is required"))?
        .to_str()
        .map_err(|_| unsupported("Content-Type is not ASCII"))?;
    let mut parts = value.splitn(2, ';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let ok = essence.len() <= konvert_envelope::model::MAX_MEDIA_TYPE_LEN
        && essence.split_once('/').is_some_and(|(t, s)| {
            !t.is_empty() && !s.is_empty() && t.bytes().all(is_tchar) && s.bytes().all(is_tchar)
        });
    if !ok {
        return Err(unsupported("Content-Type is not a media type (type/subtype)"));
    }
    Ok((essence, params))
}

fn upload_media_type(headers: &HeaderMap) -> Result<String, Problem> {
    media_type_essence(headers).map(|(essence, _)| essence)
}

fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let (essence, params) = media_type_essence(headers).map_err(|mut p| {
        p.detail = "Content-Type must be application/json".into();
        p
    })?;
    let charset_ok = params
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .all(|c| c.trim_matches('"') == "utf-8");
    if essence != "application/json" || !charset_ok {
        return Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            "Content-Type must be application/json (UTF-8)",
        )
        .with_error(
            "content-type",
            "unsupported_media_type",
            "expected application/json",
        ));
    }
    Ok(())
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>, max: u64) -> Result<T, Problem> {
    require_json(req.headers())?;
    if content_length(req.headers())?.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
        Err(_) => {
            return Err(Problem::new(
                ProblemType::BadRequest,
                "the request body could not be read",
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| Problem::from_json_error(&e, &body))
}

/// Query parameters, each at most once, only the names a route knows.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>, allowed: &[&str]) -> Result<Self, Problem> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k).ok_or_else(|| {
                Problem::bad_param("", "invalid_format", "a parameter name is not valid UTF-8")
            })?;
            if !allowed.contains(&k.as_str()) {
                let shown: String =
                    if k.len() <= 32 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        k.clone()
                    } else {
                        "*".into()
                    };
                let known = if allowed.is_empty() {
                    "this route takes no parameters".to_owned()
                } else {
                    format!("known parameters: {}", allowed.join(", "))
                };
                return Err(Problem::bad_param(&shown, "unknown_parameter", known));
            }
            let v = percent_decode(v).ok_or_else(|| {
                Problem::bad_param(&k, "invalid_format", "not valid UTF-8 after percent-decoding")
            })?;
            if out.iter().any(|(name, _)| *name == k) {
                return Err(Problem::bad_param(
                    &k,
                    "duplicate_parameter",
                    "given more than once",
                ));
            }
            if !v.is_empty() {
                out.push((k, v));
            }
        }
        Ok(Self(out))
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn no_query(q: Option<&str>) -> Result<(), Problem> {
    Query::parse(q, &[]).map(|_| ())
}

/// Decodes `%XX` escapes (a `+` stays a `+`, as in RFC 3986, so that time
/// offsets survive). `None` for a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_id(field: &str, s: &str) -> Result<Id, Problem> {
    s.parse::<Id>()
        .map_err(|e| Problem::bad_param(field, "invalid_format", e.reason))
}

fn parse_time(field: &str, s: &str) -> Result<Timestamp, Problem> {
    s.parse::<Timestamp>()
        .map_err(|e| Problem::bad_param(field, "invalid_format", e.reason))
}

fn parse_u64(field: &str, s: &str) -> Result<u64, Problem> {
    if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse()
            .map_err(|_| Problem::bad_param(field, "out_of_range", "too large"))
    } else {
        Err(Problem::bad_param(
            field,
            "invalid_format",
            "expected a non-negative integer",
        ))
    }
}

fn parse_u32(field: &str, s: &str, min: u32, max: u32) -> Result<u32, Problem> {
    let n: u64 = if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().unwrap_or(u64::MAX)
    } else {
        return Err(Problem::bad_param(
            field,
            "invalid_format",
            "expected a non-negative integer",
        ));
    };
    if n < u64::from(min) || n > u64::from(max) {
        return Err(Problem::bad_param(
            field,
            "out_of_range",
            format!("expected {min} to {max}"),
        ));
    }
    Ok(n as u32)
}

fn full(bytes: Bytes) -> ApiBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<ApiBody> {
    match serde_json::to_vec(value) {
        Ok(v) => {
            let mut r = Response::new(full(Bytes::from(v)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "api: cannot encode a response");
            problem_response(Problem::internal(), "")
        }
    }
}

/// The problem as a response; `instance` is the request path unless the service set one.
pub(crate) fn problem_response(mut p: Problem, path: &str) -> Response<ApiBody> {
    if p.instance.is_none() && !path.is_empty() {
        p.instance = Some(path.to_owned());
    }
    if p.type_ == ProblemType::Internal {
        tracing::warn!(detail = %p.detail, "api: internal error answered");
    }
    let body = serde_json::to_vec(&p).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = p.status_code();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    if p.type_ == ProblemType::PayloadTooLarge || p.type_ == ProblemType::UnauthorizedCaller {
        // The rest of the body (or the caller) is not wanted.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn download_response(d: Download) -> Response<ApiBody> {
    let body = crate::reader_body::ReaderBody::new(d.reader, d.length);
    let mut r = Response::new(body.boxed_unsync());
    let h = r.headers_mut();
    let ct = HeaderValue::from_str(&d.media_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    if let Some(n) = d.length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(digest) = d.sha256 {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest.0);
        if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{b64}:")) {
            h.insert("repr-digest", v);
        }
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_parameters() {
        let (i, p) = match_route("/v1/inbox/abc/attachments/2").unwrap();
        assert_eq!(ROUTES[i].path, "/v1/inbox/{id}/attachments/{n}");
        assert_eq!(p, vec!["abc".to_owned(), "2".to_owned()]);
        assert!(match_route("/v1/inbox/").is_none());
        assert!(match_route("/v2/inbox").is_none());
        assert_eq!(ROUTES[match_route("/v1/inbox").unwrap().0].path, "/v1/inbox");
    }

    #[test]
    fn query_is_strict() {
        assert!(Query::parse(Some("limit=5&after=x"), &["limit", "after"]).is_ok());
        let e = Query::parse(Some("limit=5&limit=6"), &["limit"]).err().unwrap();
        assert_eq!(e.errors[0].rule, "duplicate_parameter");
        let e = Query::parse(Some("peers=x"), &["peer"]).err().unwrap();
        assert_eq!(e.errors[0].field, "peers");
        assert_eq!(
            percent_decode("2026-01-01T00:00:00+01:00").unwrap(),
            "2026-01-01T00:00:00+01:00"
        );
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert!(percent_decode("%zz").is_none());
    }
}
