//! Errors: the server's own ([`Error`]) and the JSON error answers of the API ([`ApiError`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The admin server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serving connections failed.
    #[error("the admin server stopped: {0}; check that the listen address is usable")]
    Serve(#[source] std::io::Error),
}

/// An API request that cannot be answered normally; rendered as `{"error": "..."}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// No token, or the wrong one.
    Unauthorized,
    /// A state-changing request that may come from a web page on another site.
    Forbidden(String),
    /// A `Host` that does not name this server (DNS rebinding).
    MisdirectedHost(String),
    /// No such event, trigger or path.
    NotFound(String),
    /// A malformed parameter or body.
    BadRequest(String),
    /// The method does not apply to the path.
    MethodNotAllowed,
    /// The request cannot be carried out in the event's current state.
    Conflict(String),
    /// The database cannot be reached.
    Unavailable(String),
    /// Anything else.
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> &str {
        match self {
            ApiError::Unauthorized => {
                "missing or wrong token: send the admin token as `Authorization: Bearer <token>`"
            }
            ApiError::MethodNotAllowed => "method not allowed on this path",
            ApiError::Forbidden(m)
            | ApiError::MisdirectedHost(m)
            | ApiError::NotFound(m)
            | ApiError::BadRequest(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => m,
        }
    }
}

impl From<pgevents_log::Error> for ApiError {
    fn from(error: pgevents_log::Error) -> ApiError {
        tracing::warn!(%error, "admin API: event log query failed");
        if error.is_connection() {
            ApiError::Unavailable(format!("the database is unavailable: {error}"))
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response =
            (status, Json(serde_json::json!({ "error": self.message() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pgevents\""),
            );
        }
        response
    }
}
