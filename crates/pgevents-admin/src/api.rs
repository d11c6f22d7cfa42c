//! The JSON API under `/api/v1`: triggers with their counts, event pages, one event with its
//! attempts, redelivery, manual events and backfills.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use pgevents_log::browse::{self, AttemptRecord, EventRecord, Filter, Status, TriggerCounts};
use pgevents_log::store;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::ApiError;
use crate::prometheus;
use crate::server::AdminState;

/// Events per page when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: i64 = 50;
/// The largest page.
pub(crate) const MAX_LIMIT: i64 = 1000;

/// The answer of `GET /api/v1/triggers`.
#[derive(Debug, Serialize)]
pub(crate) struct TriggersPage {
    triggers: Vec<TriggerCounts>,
    /// Age in seconds of the oldest captured row not yet in the log.
    capture_lag_seconds: f64,
}

/// Reads the per-trigger counts (and refreshes the metrics' gauges with them).
pub(crate) async fn read_status(state: &AdminState) -> Result<TriggersPage, ApiError> {
    let conn = state.pool().get().await?;
    let (triggers, capture_lag_seconds) = browse::status(&conn, state.schema()).await?;
    prometheus::set_gauges(&triggers, capture_lag_seconds);
    Ok(TriggersPage {
        triggers,
        capture_lag_seconds,
    })
}

/// `GET /api/v1/triggers`.
pub(crate) async fn triggers(
    State(state): State<AdminState>,
) -> Result<Json<TriggersPage>, ApiError> {
    read_status(&state).await.map(Json)
}

/// The query of `GET /api/v1/events`; empty values mean "not given".
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    trigger: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    before: Option<String>,
    since: Option<String>,
}

/// A page of events, newest first; `next_before` is the cursor of the next (older) page.
#[derive(Debug, Serialize)]
pub(crate) struct EventsPage {
    events: Vec<EventRecord>,
    next_before: Option<i64>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_list_query(q: &ListQuery) -> Result<(Filter, Option<DateTime<Utc>>), ApiError> {
    let status = given(&q.status)
        .map(str::parse::<Status>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let limit = match given(&q.limit) {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => n.min(MAX_LIMIT),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit {v:?} is not a number from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let before = given(&q.before)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "before {v:?} is not a cursor: pass the `next_before` of the previous page"
                ))
            })
        })
        .transpose()?;
    let since = given(&q.since)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "since {v:?} is not an RFC 3339 time such as 2026-11-24T10:15:00Z"
                    ))
                })
        })
        .transpose()?;
    let filter = Filter {
        trigger: given(&q.trigger).map(str::to_owned),
        status,
        before,
        limit: Some(limit),
    };
    Ok((filter, since))
}

/// `GET /api/v1/events?trigger=&status=&limit=&before=&since=`: events newest first.
///
/// `before` is the cursor: the `next_before` of the previous page (the log position of its
/// last event). `since` (RFC 3339) keeps only events captured at or after that time, and
/// ends the paging there.
pub(crate) async fn list(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (filter, since) = parse_list_query(&query)?;
    let conn = state.pool().get().await?;
    let mut events = browse::list(&conn, state.schema(), state.salt(), &filter).await?;
    drop(conn);
    let full = events.len() as i64 >= filter.limit.unwrap_or(DEFAULT_LIMIT);
    let mut reached_since = false;
    if let Some(since) = since {
        let before = events.len();
        events.retain(|e| e.created_at >= since);
        reached_since = events.len() < before;
    }
    let next_before = if full && !reached_since {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(EventsPage {
        events,
        next_before,
    }))
}

/// One event (as in the list) with its payload (in the seed format) and every attempt.
#[derive(Debug, Serialize)]
pub(crate) struct EventDetail {
    event: EventRecord,
    payload: Box<RawValue>,
    attempts: Vec<AttemptRecord>,
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id.trim())
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not an event id (a UUID)")))
}

fn unknown_event(id: Uuid) -> ApiError {
    ApiError::NotFound(format!(
        "no event {id}: it does not exist, or retention removed it"
    ))
}

/// `GET /api/v1/events/{id}`.
pub(crate) async fn show(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    let id = parse_id(&id)?;
    let conn = state.pool().get().await?;
    let found = browse::show(&conn, state.schema(), state.salt(), id).await?;
    drop(conn);
    let (event, attempts) = found.ok_or_else(|| unknown_event(id))?;
    let payload = RawValue::from_string(event.event().payload_str().to_owned())
        .map_err(|e| ApiError::Internal(format!("the event's payload is not JSON: {e}")))?;
    Ok(Json(EventDetail {
        event,
        payload,
        attempts,
    }))
}

/// `GET /api/v1/events/{id}/payload`: the payload exactly as delivered (seed format).
pub(crate) async fn payload(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let conn = state.pool().get().await?;
    let found = browse::show(&conn, state.schema(), state.salt(), id).await?;
    drop(conn);
    let (event, _) = found.ok_or_else(|| unknown_event(id))?;
    let mut response = event.event().payload().to_vec().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `POST /api/v1/events/{id}/redeliver`: 202 once the event is pending and due again, with
/// a fresh retry budget; 409 while it is being delivered.
pub(crate) async fn redeliver(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = parse_id(&id)?;
    let conn = state.pool().get().await?;
    let found = browse::show(&conn, state.schema(), state.salt(), id).await?;
    let (event, _) = found.ok_or_else(|| unknown_event(id))?;
    let n = store::redeliver(&conn, state.schema(), &[event.seq]).await?;
    if n == 0 {
        return Err(ApiError::Conflict(format!(
            "event {id} is being delivered right now; try again when this attempt ends"
        )));
    }
    tracing::info!(event_id = %id, trigger = %event.trigger, "redelivery requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "status": Status::Pending })),
    ))
}

/// `POST /api/v1/triggers/{name}/invoke`: a manual event (action `MANUAL`, `data.new` = the
/// JSON body); 201 with its id.
pub(crate) async fn invoke(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let data: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body must be a JSON document: {e}")))?;
    let conn = state.pool().get().await?;
    let trigger = store::triggers(&conn, state.schema())
        .await?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no trigger named {name:?}")))?;
    let (seq, created_at) = store::invoke(&conn, state.schema(), trigger.id, &data).await?;
    let id = pgevents_event::event_id(created_at, state.salt(), seq);
    tracing::info!(event_id = %id, trigger = %trigger.name, "manual event written");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

/// The body of `POST /api/v1/triggers/{name}/backfill`: optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackfillBody {
    /// Only rows matching this SQL condition on the table's columns.
    #[serde(rename = "where")]
    condition: Option<String>,
}

/// `POST /api/v1/triggers/{name}/backfill`: starts a backfill (a `READ` event for every row
/// of the trigger's table, or those matching `where`); 202 with its id. Daemons write its
/// chunks (`GET /api/v1/backfills` shows the progress).
pub(crate) async fn start_backfill(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body: BackfillBody = if body.iter().all(u8::is_ascii_whitespace) {
        BackfillBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be empty or a JSON object like {{\"where\": \"status = 'paid'\"}}: {e}"
            ))
        })?
    };
    let conn = state.pool().get().await?;
    let id =
        pgevents_capture::backfill::start(&*conn, state.schema(), &name, body.condition.as_deref())
            .await
            .map_err(|e| match e {
                pgevents_log::Error::NoSuchTrigger(_) => ApiError::NotFound(e.to_string()),
                pgevents_log::Error::BadBackfillCondition { .. }
                | pgevents_log::Error::NoPrimaryKey(_)
                | pgevents_log::Error::NoSuchTable(_) => ApiError::BadRequest(e.to_string()),
                other => other.into(),
            })?;
    tracing::info!(backfill = id, trigger = %name, "backfill started");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id }))))
}

/// `GET /api/v1/backfills`: the latest backfills with their progress, newest first.
pub(crate) async fn backfills(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let conn = state.pool().get().await?;
    let backfills = pgevents_log::backfill::list(&conn, state.schema(), MAX_LIMIT).await?;
    Ok(Json(serde_json::json!({ "backfills": backfills })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let mut q = ListQuery::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "trigger" => q.trigger = v,
                "status" => q.status = v,
                "limit" => q.limit = v,
                "before" => q.before = v,
                "since" => q.since = v,
                _ => {}
            }
        }
        q
    }

    #[test]
    fn list_queries_are_checked() {
        let (f, since) = parse_list_query(&q(&[("trigger", ""), ("status", "")])).unwrap();
        assert_eq!(
            (f.trigger, f.status, f.before, f.limit),
            (None, None, None, Some(50))
        );
        assert!(since.is_none());
        let (f, since) = parse_list_query(&q(&[
            ("trigger", "orders"),
            ("status", "failed"),
            ("limit", "5000"),
            ("before", "42"),
            ("since", "2026-11-24T10:15:00Z"),
        ]))
        .unwrap();
        assert_eq!(f.trigger.as_deref(), Some("orders"));
        assert_eq!(f.status, Some(Status::Failed));
        assert_eq!((f.before, f.limit), (Some(42), Some(MAX_LIMIT)));
        assert!(since.is_some());
        for bad in [
            ("status", "done"),
            ("limit", "0"),
            ("limit", "ten"),
            ("before", "x"),
            ("since", "yesterday"),
        ] {
            assert!(
                matches!(parse_list_query(&q(&[bad])), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
